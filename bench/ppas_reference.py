"""The public reference distributions of PPAS (deid/anonymize/data/ppas-reference.json).

The attribute plug-ins (``age-gender`` at its default bands, ``face-mesh`` at its defaults) over
a PUBLIC set, ``lfw-public-ref`` (3000 LFW identities disjoint from lfw-dev), on every
``--every``-th photo; per photo the detected face nearest the image centre (dlib-hog; LFW
centres the named face). A photo with no face, or whose face a plug-in cannot estimate,
counts for none of that plug-in's attributes. ``age_years`` counts the expected age (floored) per
year, so that the reference of any integer ``age_bands`` follows from it. Writes the JSON table the ``attribute`` method
ships (docs/attributes.md).

    OMP_NUM_THREADS=1 python bench/ppas_reference.py [--every 3] [--out deid/anonymize/data/ppas-reference.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lfw-public-ref"))
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--detector", default="dlib-hog")
    ap.add_argument("--out", default=str(REPO / "deid" / "anonymize" / "data" / "ppas-reference.json"))
    a = ap.parse_args()

    from tqdm import tqdm

    from bench.attributes import centre_face
    from deid.attributes.registry import make_estimator
    from deid.faces.registry import make_detector
    from deid.io.decode import decode_image

    det = make_detector({"backend": a.detector})
    plugins = {"age-gender": make_estimator("age-gender", {"threads": 1}), "face-mesh": make_estimator("face-mesh")}
    photos = sorted(Path(a.data).glob("*.jpg"))[:: a.every]
    counts: dict[str, Counter] = {}
    specs = {}
    no_face = 0
    years = Counter()
    for p in tqdm(photos, desc="reference", unit="photo"):
        rgb = decode_image(p.read_bytes(), max_pixels=10**7).rgb
        faces = det.detect(rgb)
        if not faces:
            no_face += 1
            continue
        face = centre_face(rgb, faces)
        for est in plugins.values():
            for name, e in (est.estimate(rgb, [face])[0] or {}).items():
                specs[name] = e.spec
                counts.setdefault(name, Counter())[e.value] += 1
        a_probs, _ = plugins["age-gender"].raw(rgb, [face])
        years[min(80, int(math.floor(float(plugins["age-gender"].ages(a_probs)[0]))))] += 1
    table = {
        "format": "deid-ppas-reference/1",
        "source": f"{Path(a.data).name}: {'all' if a.every == 1 else f'every {a.every}th of the'} "
                  f"{len(sorted(Path(a.data).glob('*.jpg')))} photos, the {a.detector} face nearest the centre ({no_face} without a face); "
                  f"plug-ins age-gender and face-mesh at their defaults; bench/ppas_reference.py, "
                  f"{datetime.date.today().isoformat()}",
        "attributes": {},
    }
    for name, c in sorted(counts.items()):
        s = specs[name]
        n = sum(c.values())
        table["attributes"][name] = {"plugin": "age-gender" if name in ("age", "gender") else "face-mesh",
                                     "values": list(s.values), "ordered": s.ordered, "n": n,
                                     "counts": [int(c.get(i, 0)) for i in range(s.k)]}
    # the age plug-in's expected age, floored, per year 0-80: the reference of any integer band edges
    table["age_years"] = [int(years.get(i, 0)) for i in range(81)]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
