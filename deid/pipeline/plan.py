"""Planning on the driver: the listing, each record's output name, refusals, and resume.

Contract: names are computed here, on the driver, so the naming secret never travels to
workers; a record refused here (a name collision) is not processed and gets a ``failed`` row;
records an earlier run of the same job committed are skipped (a ``skipped`` row each).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import pyarrow as pa

from deid.audit.rows import RunContext, now, record_row
from deid.config.schema import Manifest
from deid.io.listing import discover, load_subjects
from deid.io.write import key_id, naming_key, output_stem
from deid.pipeline.resume import Prior


@dataclass
class Plan:
    records: pa.Table            # what the workers process: listing + output_stem
    refused: list[tuple[str, str, str, str]]  # (record_id, uri, error_code, message): failed on the driver
    naming_key_id: str | None


def _name_key(stem: str) -> str:
    """What two output names share when a filesystem would store them as one file: case
    (case-insensitive filesystems) and Unicode normalisation (NFC and NFD forms of one name:
    macOS, and others that normalise)."""
    return unicodedata.normalize("NFC", stem.lower())


def plan_records(manifest: Manifest) -> Plan:
    """Listing plus the output stem of each record. Names are computed here, on the
    driver, so the naming secret never travels to workers. With ``naming: mirror`` two
    inputs that differ only by extension would write one output: both are refused
    (a ``failed`` row each, ``error_code = name_collision``) and the rest go on."""
    subjects = load_subjects(manifest.input.subjects, manifest.input.storage_options) if manifest.input.subjects else None
    listing = discover(manifest, subjects)
    key = b"" if manifest.output.naming == "mirror" else naming_key(manifest.output.naming_key_env, manifest.output.naming_key_file)
    rels = listing.column("rel_path").to_pylist()
    stems = [output_stem(p, manifest.output.naming, key) for p in rels]
    listing = listing.append_column("output_stem", pa.array(stems, pa.string()))
    refused: list[tuple[str, str, str, str]] = []
    by_stem: dict[str, list[int]] = {}
    errors = listing.column("listing_error").to_pylist()
    for i, stem in enumerate(stems):
        if errors[i] is None:  # refused by the listing: never written, so it cannot collide
            by_stem.setdefault(_name_key(stem), []).append(i)
    clash = sorted(i for idx in by_stem.values() if len(idx) > 1 for i in idx)
    if clash:
        ids, uris = listing.column("record_id").to_pylist(), listing.column("uri").to_pylist()
        for i in clash:
            twins = [j for j in by_stem[_name_key(stems[i])] if j != i]
            others = ", ".join(rels[j] for j in twins)
            why = ""
            if any(stems[j].lower() != stems[i].lower() for j in twins):
                why = ("; the names differ only in Unicode normalisation (NFC and NFD forms of one name), which "
                       "macOS and other normalising filesystems store as one file")
            elif any(stems[j] != stems[i] for j in twins):
                why = "; the names differ only in case, which case-insensitive filesystems store as one file"
            refused.append((ids[i], uris[i], "name_collision",
                            f"{uris[i]}: output.naming=mirror gives it the same output name as {others}{why}; "
                            "rename one, or use naming: hash"))
        mask = pa.array([i not in set(clash) for i in range(len(stems))])
        listing = listing.filter(mask)
    return Plan(records=listing, refused=refused, naming_key_id=key_id(key) if key else None)


def driver_row(record_id: str, uri: str, code: str | None, message: str | None, ctx: RunContext, manifest: Manifest,
               status: str = "failed") -> dict:
    """A row made on the driver for a record no worker processes (refused, withheld, lost or skipped)."""
    import json

    from deid.anonymize import is_dp

    row = record_row(ctx, record_id, uri, method=manifest.anonymize.method,
                     params_json=json.dumps(manifest.anonymize.params, sort_keys=True),
                     dp_scope=None if is_dp(manifest.anonymize.method) else "none",
                     status=status, error_code=code, error=message)
    row["processed_at"] = now()
    return row


def apply_prior(plan: pa.Table, prior: Prior, ctx: RunContext, manifest: Manifest) -> tuple[pa.Table, list[dict]]:
    """Skip committed records (a ``skipped`` row each) and attach, to the rest, the outputs
    that already exist under their name (``stale``: removed unless they are the final output)."""
    ids = plan.column("record_id").to_pylist()
    rows: list[dict] = []
    if prior.committed:
        uris = plan.column("uri").to_pylist()
        keep = []
        for i, rid in enumerate(ids):
            c = prior.committed.get(rid)
            if c is None:
                keep.append(True)
                continue
            keep.append(False)
            row = driver_row(rid, uris[i], None, None, ctx, manifest, status="skipped")
            row.update(output_uri=c["output_uri"], output_sha256=c["output_sha256"], resumed_from=c["run_id"])
            rows.append(row)
        plan = plan.filter(pa.array(keep))
    stems = plan.column("output_stem").to_pylist()
    stale = [prior.stale.get(s, []) for s in stems]
    plan = plan.append_column("stale", pa.array(stale, pa.list_(pa.string())))
    return plan, rows
