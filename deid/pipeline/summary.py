"""Collecting the workers' audit tables, and the run summary.

Contract: results are matched to inputs by ``record_id``, never by order; the first answer
for a record wins (a retried task may answer twice); every table goes to the audit writer
(which journals it first) as it arrives, and is counted even when the writer then fails;
the summary is written last.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from deid import __version__
from deid.audit.schema import STATUSES


@dataclass
class Tally:
    faces: int = 0
    distances: list = field(default_factory=list)
    residual: Counter = field(default_factory=Counter)  # residual-face gate: action -> faces
    treatments: Counter = field(default_factory=Counter)  # audit faces' treatment -> faces


def consume(results, expected, seen, writer, counts, bar, on_batch, tally: Tally) -> None:
    for table in results:
        ids = table.column("record_id").to_pylist()
        keep = [i for i, r in enumerate(ids) if r in expected and r not in seen]
        if len(keep) != len(ids):  # duplicates from a retried task: first answer wins
            table = table.take(pa.array(keep, pa.int64()))
            ids = [ids[i] for i in keep]
        seen.update(ids)
        counts.update(table.column("status").to_pylist())
        tally.faces += int(pc.sum(table.column("n_faces")).as_py() or 0)
        flat = pc.list_flatten(table.column("faces"))
        tally.distances += [d for d in pc.struct_field(flat, "id_distance").to_pylist() if d is not None]
        tally.treatments.update(t for t in pc.struct_field(flat, "treatment").to_pylist() if t is not None)
        tally.residual.update(pc.struct_field(pc.list_flatten(table.column("residual_faces")), "action").to_pylist())
        bar.update(table.num_rows)
        writer.add(table)  # journaled first; raises when the audit cannot be written (the caller halts)
        if on_batch:
            on_batch(table)
        post = {k: counts[k] for k in STATUSES if counts[k]}
        if tally.residual:
            post["residual"] = sum(tally.residual.values())
        bar.set_postfix(post, refresh=False)




def run_summary(*, run_id: str, ctx, manifest, inputs: int, rows_written: int, counts: Counter, tally: Tally,
                wall: float, engine: str, resumed: bool, temp_files_removed, aborted: str | None,
                records_uri: str) -> dict:
    """The run's summary.json: counts per status, faces, identity distances, speed, locations."""
    distances = tally.distances
    return {
        "run_id": run_id,
        "tool_version": __version__,
        "config_sha256": ctx.config_sha256,
        "inputs": inputs,
        "audit_rows": rows_written,
        "counts": {k: counts.get(k, 0) for k in STATUSES},
        "faces": tally.faces,
        # what was done to them (the audit's per-face treatment): the method, mask, pixelate
        "face_treatments": dict(tally.treatments.most_common()),
        # faces the residual-face gate found on outputs that no anonymized region covered, by action
        "residual_faces": {a: tally.residual.get(a, 0) for a in ("anonymized", "masked", "quarantined", "unresolved")},
        "id_distance": {
            "min": min(distances) if distances else None,
            "median": statistics.median(distances) if distances else None,
            "n": len(distances),
        },
        "wall_seconds": round(wall, 3),
        "records_per_second": round(inputs / wall, 3) if wall > 0 else None,
        "engine": engine,
        "resumed": resumed,
        "temp_files_removed": temp_files_removed,
        "aborted": aborted,
        "output_uri": manifest.output.uri,
        "quarantine_uri": manifest.quarantine_uri,
        "audit_uri": manifest.audit_uri,
        "audit_records_uri": records_uri,
        "method": manifest.anonymize.method,
        # plug-ins with non-commercial weights this job ran, acknowledged in licences.accept_non_commercial
        "non_commercial_accepted": [p.name for _, p, _ in manifest.non_commercial_used()],
    }
