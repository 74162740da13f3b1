"""Accuracy of the attribute plug-ins on hand-labelled lfw-dev faces (docs/attributes.md).

Labels: tests/fixtures/attributes/lfw-dev-labels.csv (provenance in its README.md):
* gender of the 60 identities, by hand from the public figures' names;
* mouth (closed/open: lips apart) of each identity's photo _0001, by hand from the photo;
* birth year of 59 identities (David_Anderson is ambiguous), from general knowledge; the age
  at the photo is taken as 2002 - birth year (LFW's news photos are 2002-2004), so about +-2 y.

Faces: per photo the detected face nearest the image centre (LFW centres the named face).

    python bench/attributes.py [--data ../shared/data/lfw-dev] [--detector dlib-hog] [--all-photos]
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "tests" / "fixtures" / "attributes" / "lfw-dev-labels.csv"
PHOTO_YEAR = 2002


def labels() -> dict[str, dict]:
    with open(LABELS) as f:
        return {r["subject"]: r for r in csv.DictReader(f)}


def centre_face(rgb, faces):
    h, w = rgb.shape[:2]
    return min(faces, key=lambda f: np.hypot((f.box[0] + f.box[2]) / 2 - w / 2, (f.box[1] + f.box[3]) / 2 - h / 2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lfw-dev"))
    ap.add_argument("--detector", default="dlib-hog")
    ap.add_argument("--all-photos", action="store_true", help="gender and age on every photo, not only _0001")
    a = ap.parse_args()

    from deid.attributes.registry import make_estimator
    from deid.faces.registry import make_detector
    from deid.io.decode import decode_image

    lab = labels()
    det = make_detector({"backend": a.detector})
    ag, fm = make_estimator("age-gender"), make_estimator("face-mesh")
    g_ok = g_n = m_ok = m_n = missed = 0
    age_err, band_ok, band_n = [], 0, 0
    conf_m = Counter()
    poses = []
    for subject, row in sorted(lab.items()):
        photos = sorted((Path(a.data) / subject).glob("*.jpg"))
        for p in photos if a.all_photos else photos[:1]:
            rgb = decode_image(p.read_bytes(), max_pixels=10**7).rgb
            faces = det.detect(rgb)
            if not faces:
                missed += 1
                continue
            face = centre_face(rgb, faces)
            e = ag.estimate(rgb, [face])[0]
            g_n += 1
            g_ok += e["gender"].label == row["gender"]
            if row["birth_year"]:
                years = float(ag.ages(ag.raw(rgb, [face])[0])[0])
                truth = PHOTO_YEAR - int(row["birth_year"])
                age_err.append(years - truth)
                band_n += 1
                band_ok += e["age"].value == ag.band(truth)
            if p.name.endswith("_0001.jpg"):
                em = fm.estimate(rgb, [face])[0]
                if em:
                    m_n += 1
                    m_ok += em["mouth"].label == row["mouth_0001"]
                    conf_m[(row["mouth_0001"], em["mouth"].label)] += 1
                    poses.append((em["yaw"].label, em["pitch"].label))
    err = np.asarray(age_err)
    print(f"photos with no face ({a.detector}): {missed}")
    print(f"gender: {g_ok}/{g_n} = {g_ok / max(g_n, 1):.1%}")
    print(f"age: MAE {np.abs(err).mean():.1f} y, mean error {err.mean():+.1f} y (n={len(err)}); "
          f"band {band_ok}/{band_n} = {band_ok / max(band_n, 1):.1%} (bands {', '.join(ag.age.values)})")
    print(f"mouth: {m_ok}/{m_n} = {m_ok / max(m_n, 1):.1%}; (label, estimate) counts {dict(conf_m)}")
    print(f"yaw bands {dict(Counter(y for y, _ in poses))}; pitch bands {dict(Counter(q for _, q in poses))}")


if __name__ == "__main__":
    main()
