"""The privacy budget on the driver: the budget service, and withholding what cannot be afforded.

The service (deid.privacy.service) is the one place a run talks to the ledger and holds the
subject-key secret: a Ray actor pinned to the driver's node, or a plain object inline.
Subject names are turned into keyed subject keys here, on the driver, and never travel.
"""

from __future__ import annotations

import math
import os

import pyarrow as pa

from deid.config.schema import Manifest
from deid.pipeline.engine import init_ray, root_cause
from deid.pipeline.errors import RunError


def release_of(manifest: Manifest):
    """The per-face :class:`deid.facts.DpRelease` of the manifest's DP method (what each face
    is charged), or a tuple of them (several releases per face), from the method itself."""
    from deid.anonymize import make_anonymizer

    return make_anonymizer(manifest.anonymize.method, manifest.anonymize.params, manifest.latent).release


def budget_service(manifest: Manifest, engine: str):
    """The budget service (deid.privacy.service): a Ray actor pinned to this node, or a plain object."""
    from deid.privacy.service import BudgetService

    p = manifest.privacy
    args = (p.ledger, p.max_epsilon, p.max_delta, p.subject_key_env, p.subject_key_file, p.create_subject_key)
    from deid.privacy.keys import SubjectKeyError, load_secret, write_new_secret

    if engine != "ray":
        try:
            return BudgetService(*args)
        except SubjectKeyError as exc:  # the user's to fix: a message, not a traceback
            raise RunError(str(exc)) from None
    ray = init_ray(manifest)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # The secret is read here, on the driver: on a cluster the actor's process does not
    # share the driver's environment. It reaches the actor by a direct call (use_key), not
    # as an actor argument or a runtime_env variable, which Ray stores or logs.
    try:
        if (p.create_subject_key and p.subject_key_file and not os.environ.get(p.subject_key_env, "").strip()
                and not os.path.exists(p.subject_key_file)):
            write_new_secret(p.subject_key_file)
        secret = load_secret(p.subject_key_env, p.subject_key_file)
    except SubjectKeyError as exc:
        raise RunError(str(exc)) from None
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(BudgetService).options(
        num_cpus=0, max_concurrency=8, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(*args[:5], False, True)
    try:
        ray.get(actor.use_key.remote(secret))  # also surfaces a bad ledger before the run starts
    except ray.exceptions.RayError as exc:
        raise RunError(f"the budget service could not start on the driver's node: {root_cause(exc)}") from None
    return actor


def plan_budget(manifest: Manifest, plan: pa.Table, budget) -> tuple[pa.Table, list]:
    """Replace subject names by keyed subject keys (names never leave the driver) and
    withhold labeled records whose subject could not afford even one more release."""
    from deid.privacy.service import call

    release = release_of(manifest)
    names = plan.column("subject").to_pylist()
    key_of = {s: call(budget, "labeled_key", s) for s in set(names) if s is not None}
    broke = {k for k in key_of.values() if call(budget, "would_exceed", k, release)}
    keys = [key_of.get(s) if s is not None else None for s in names]
    plan = plan.drop_columns(["subject"]).append_column("subject_key", pa.array(keys, pa.string()))
    out = [i for i, k in enumerate(keys) if k in broke]
    withheld = []
    if out:
        ids, uris = plan.column("record_id").to_pylist(), plan.column("uri").to_pylist()
        withheld = [(ids[i], uris[i], "", f"{uris[i]}: withheld: the labeled subject's privacy budget "
                     f"(privacy.max_epsilon={manifest.privacy.max_epsilon}) cannot afford another release; "
                     "not processed, nothing charged") for i in out]
        drop = set(out)
        plan = plan.filter(pa.array([i not in drop for i in range(plan.num_rows)]))
    return plan, withheld




def budget_picture(manifest: Manifest, plan: pa.Table) -> dict:
    """The dry run's budget picture for a DP method: one charge per face; labeled subjects are
    assumed to have one face per record, unlabeled faces are charged to their own content keys.
    Opens no ledger that does not exist yet, and charges nothing."""
    from collections import Counter as _Counter

    from deid.privacy.accountant import Charge, would_exceed
    from deid.privacy.keys import SubjectKeyer, load_secret

    charges = list(Charge.all_of(release_of(manifest)))  # one per face, or one per face and attribute
    p = manifest.privacy
    names = plan.column("subject").to_pylist()
    per_subject = _Counter(n for n in names if n is not None)
    history: dict[str, list] = {}
    ledger_exists = "://" in p.ledger or os.path.exists(p.ledger)
    if ledger_exists and per_subject:
        from deid.privacy.ledger import Ledger

        keyer = SubjectKeyer(load_secret(p.subject_key_env, p.subject_key_file))
        with Ledger.open(p.ledger, p.max_epsilon, p.max_delta, create=False) as led:
            history = {s: led.history(keyer.labeled(s)) for s in per_subject}
    exhausted = 0
    withheld = 0
    for s, n in per_subject.items():
        hist = list(history.get(s, []))
        fits = 0
        while fits < n and not would_exceed(hist, charges * (fits + 1), p.max_epsilon, p.max_delta):
            fits += 1
        if fits < n:
            exhausted += 1
            withheld += n - fits
    return {
        "epsilon_per_face": math.fsum(c.epsilon for c in charges), "delta_per_face": math.fsum(c.delta for c in charges),
        "mechanism": "+".join(sorted({c.mechanism for c in charges})),
        "max_epsilon": p.max_epsilon, "ledger": p.ledger, "ledger_exists": ledger_exists,
        "labeled_records": sum(per_subject.values()), "labeled_subjects": len(per_subject),
        "unlabeled_records": sum(1 for n in names if n is None),
        "subjects_exhausted_by_this_run": exhausted, "labeled_records_withheld": withheld,
    }


