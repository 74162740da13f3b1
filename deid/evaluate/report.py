"""report.html: one static, self-contained page (CSS inline, images as data: URIs).

Sections: summary tables (privacy per recognizer, utility), privacy-utility curves and
identity-distance distributions (matplotlib), a contact sheet per group (original above
anonymized), and the worst cases (smallest identity distance under deid's check network).
``originals=False`` leaves every original face out (for sharing the report outside the data
owner): contact sheets and worst cases then show the anonymized faces only.
Faces are identified by a short record id, never by file name or subject.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from deid.evaluate.core import Group

SHEET_COLUMNS = 8
WORST = 8
MARKERS = {"dlib-resnet128": ("-", "o"), "mobilefacenet": ("--", "s")}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _png_array(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _adaptive(a: dict, extra: str) -> str:
    """An adaptive attack's cell: its top-1 and, in brackets, ``extra``; the reason when it did not run."""
    if a.get("applicable") is False:
        return f"<span title='{html.escape(a.get('why', ''), quote=True)}'>n/a</span>"
    x = a.get(extra)
    sign = "+" if extra.startswith("gain") and x is not None and x >= 0 else ""
    return f"{_fmt(a['top1'], True)} ({sign}{_fmt(x, True)})"


def _fmt(v, pct=False, nd=3) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.{nd}f}"


def _short(label: str) -> str:
    """``strength=0.05`` -> ``0.05`` (the legend names the method; one varying parameter)."""
    parts = label.strip().split()
    return " ".join(p.split("=", 1)[-1] for p in parts) if len(parts) == 1 else label.strip()


def curves_figure(metrics: dict):
    """T1 top-1 against detection rate and against face SSIM, one curve per method and recognizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = metrics["groups"]
    methods = sorted({g["method"] for g in groups})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    xs = (("detection rate on outputs (" + metrics["detectors"]["configured"] + ")",
           lambda g: g["utility"]["detection_rate"]["configured"]["rate"]),
          ("SSIM of the face region", lambda g: g["utility"]["face"]["ssim"]))
    for ax, (xlabel, xget) in zip(axes, xs):
        for rec in metrics["recognizers"]:
            name = rec["name"]
            ls, mk = MARKERS.get(name, ("-.", "^"))
            for m in methods:
                pts = [(xget(g), g["privacy"][name]["attacks"]["T1"]["top1"], _short(g["label"][len(m):]))
                       for g in groups if g["method"] == m]
                pts = [p for p in pts if p[0] is not None and p[1] is not None]  # in grid order
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker=mk, color=colors[m],
                        label=f"{m} ({name})")
                if name == metrics["recognizers"][0]["name"]:
                    for x, y, lab in pts:
                        if lab:
                            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colors[m])
            ref = metrics["reference"]["recognizers"].get(name, {})
            if ref.get("top1") is not None:
                ax.axhline(ref["top1"], color="grey", ls=ls, lw=0.8)
        chance = [g["privacy"][metrics["recognizers"][0]["name"]]["attacks"]["T1"]["chance_top1"] for g in groups]
        chance = [c for c in chance if c is not None]
        if chance:
            ax.axhline(float(np.mean(chance)), color="black", ls=":", lw=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("T1 top-1 re-identification rate")
    axes[0].set_ylim(-0.02, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.12 - 0.04 * (len(labels) // 4)))
    fig.suptitle("privacy-utility: lower is more private, further right keeps more utility "
                 "(grey: no anonymization; dotted: chance)", fontsize=9)
    return fig


def distance_figure(metrics: dict, groups: list[Group]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = metrics["recognizers"]
    fig, axes = plt.subplots(1, len(recs), figsize=(5.5 * len(recs), 0.5 + 0.35 * max(3, len(groups))), squeeze=False)
    for ax, rec in zip(axes[0], recs):
        data = [[m.dist[rec["name"]] for m in g.records] for g in groups]
        ax.boxplot(data, orientation="horizontal", tick_labels=[g.label for g in groups], widths=0.6)
        ax.axvline(rec["same_person_threshold"], color="red", lw=1, ls="--")
        ax.set_xlabel("identity distance, original vs anonymized")
        ax.set_title(f"{rec['name']} (red: same-person threshold)", fontsize=9)
        ax.set_xlim(left=0)
        ax.tick_params(axis="y", labelsize=8)
        ax.invert_yaxis()
    return fig


def _sheet(recs, originals: bool, pad: int = 2) -> np.ndarray:
    t = recs[0].thumb.shape[0]
    n_rows = 2 if originals else 1
    sheet = np.full((n_rows * (t + pad) + pad, len(recs) * (t + pad) + pad, 3), 255, np.uint8)
    for j, m in enumerate(recs):
        x = pad + j * (t + pad)
        if originals:
            sheet[pad:pad + t, x:x + t] = _othumb(m)
        y = pad + (n_rows - 1) * (t + pad)
        sheet[y:y + t, x:x + t] = m.thumb
    return sheet


def _othumb(m) -> np.ndarray:
    return m.orig.thumb


def render(metrics: dict, groups: list[Group], originals: bool = True) -> str:
    recs = metrics["recognizers"]
    parts: list[str] = []
    e = html.escape
    parts.append(f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>deid evaluation</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}}
th,td{{border:1px solid #ccc;padding:3px 7px;text-align:right}} th{{background:#f3f3f3}}
td.l,th.l{{text-align:left}} figure{{margin:1em 0}} figcaption{{font-size:12px;color:#555}}
.note{{font-size:12px;color:#555}} img{{max-width:100%}}
</style></head><body>
<h1>deid evaluation</h1>
<p class="note">deid {e(metrics['tool_version'])}, {e(metrics['created_at'])}; audit {e(str(metrics['audit_uri']))};
run(s) {e(', '.join(metrics['run_ids']))}; {metrics['selection']['evaluated']} anonymized records evaluated
(statuses: {e(', '.join(metrics['selection']['statuses']))}; skipped: {e(json_compact(metrics['selection']['skipped']))};
errors: {e(json_compact(metrics['selection']['errors']))}).
Recognizers: {'; '.join(e(f"{r['name']} ({r['role']}, same-person threshold {r['same_person_threshold']})") for r in recs)}.
Originals {'shown' if originals else 'left out of this report'}.</p>""")

    # privacy table
    ref = metrics["reference"]
    parts.append("<h2>Privacy</h2><p class='note'>Re-identification rates (top-1 / top-5) of nearest-neighbour "
                 "identification; T1: gallery of other original photos, probe anonymized; T2: gallery anonymized, probe "
                 "originals; T3: anonymized against other anonymized; LR: logistic regression trained on originals (T1). "
                 "Same-source: T1 with the probe's own original in the gallery (can a release be traced to its photo?). "
                 "Aware: T1 through a map from anonymized to original embeddings fitted on a public set anonymized the "
                 "same way (same-source through it in brackets). Reversal: T1 after deconvolving the blur or "
                 "upsampling the pixelation the audit states (its gain over T1 in brackets). The adaptive attacks "
                 f"(aware, reversal) run with {e(', '.join(metrics['adaptive']['recognizers']))}"
                 + (f"; public set: {metrics['adaptive']['public_images']} images" if metrics['adaptive']['public_images']
                    else "; no public reference set was given (--public-ref), so the aware attacker did not run")
                 + ". De-id rate: share of faces whose distance to their original is at or above the recognizer's "
                 "same-person threshold. See docs/evaluation.md.</p>")
    parts.append("<table><tr><th class='l'>group</th><th>n</th><th class='l'>recognizer</th><th>identity distance mean (median)</th>"
                 "<th>de-id rate</th><th>T1 top-1</th><th>T1 top-5</th><th>same-source top-1</th><th>T1 LR top-1</th>"
                 "<th>T2 top-1</th><th>T3 top-1</th><th>aware top-1</th><th>reversal top-1</th><th>chance top-1</th></tr>")
    for r in recs:
        x = ref["recognizers"][r["name"]]
        parts.append(f"<tr><td class='l'><i>no anonymization</i></td><td>{ref['n_records']}</td><td class='l'>{e(r['name'])}</td>"
                     f"<td>0</td><td>–</td><td>{_fmt(x['top1'], True)}</td><td>{_fmt(x['top5'], True)}</td><td>–</td><td>–</td>"
                     f"<td>–</td><td>–</td><td>–</td><td>–</td><td>{_fmt(x['chance_top1'], True)}</td></tr>")
    for g in metrics["groups"]:
        for r in recs:
            p = g["privacy"][r["name"]]
            a = p["attacks"]
            parts.append(
                f"<tr><td class='l'>{e(g['label'])}</td><td>{g['n_records']}</td><td class='l'>{e(r['name'])}</td>"
                f"<td>{_fmt(p['identity_distance']['mean'])} ({_fmt(p['identity_distance']['median'])})</td>"
                f"<td>{_fmt(p['deid_rate'], True)}</td><td>{_fmt(a['T1']['top1'], True)}</td><td>{_fmt(a['T1']['top5'], True)}</td>"
                f"<td>{_fmt(a['same_source']['top1'], True)}</td>"
                f"<td>{_fmt(a['T1_classifier']['top1'], True)}</td><td>{_fmt(a['T2']['top1'], True)}</td>"
                f"<td>{_fmt(a['T3']['top1'], True)}</td><td>{_adaptive(a['aware'], 'same_source_top1')}</td>"
                f"<td>{_adaptive(a['reversal'], 'gain_top1')}</td><td>{_fmt(a['T1']['chance_top1'], True)}</td></tr>")
    parts.append("</table>")
    audited = [g for g in metrics["groups"] if g.get("dp_audit")]
    if audited:
        parts.append("<h3>DP audit (dp-image)</h3><p class='note'>Empirical privacy audit (deid audit-dp): a "
                     "likelihood-ratio test on real releases of worst-case public pairs; the epsilon it proves with "
                     "95% confidence (Clopper-Pearson) is a lower bound on the true epsilon and must stay at or "
                     "below the claim. A bound far below the claim does not show the claim is tight. "
                     "docs/privacy.md, \"Auditing the claim empirically\".</p>")
        parts.append("<table><tr><th class='l'>group</th><th>claimed epsilon</th><th>lower bound</th>"
                     "<th class='l'>verdict</th><th class='l'>bound for</th><th>trials</th></tr>")
        for g in audited:
            a = g["dp_audit"]
            if "why" in a:
                parts.append(f"<tr><td class='l'>{e(g['label'])}</td><td colspan='5' class='l'>not run: "
                             f"{e(a['why'])}</td></tr>")
                continue
            parts.append(f"<tr><td class='l'>{e(g['label'])}</td><td>{_fmt(a['claim']['epsilon'])}</td>"
                         f"<td>{_fmt(a['epsilon_lb'])}</td><td class='l'>{e(a['verdict'])}</td>"
                         f"<td class='l'>{e(a['bound_for'])}</td><td>{a['trials']}</td></tr>")
        parts.append("</table>")

    # utility table
    d = metrics["detectors"]
    parts.append(f"<h2>Utility</h2><p class='note'>Detection rate: share of the original's faces still found on the output "
                 f"(IoU &ge; {d['iou_match']}) by the run's detector ({e(d['configured'])}) and by a second one "
                 f"({e(str(d['second']))}; its rate on the originals in brackets); the method's faces: those the method "
                 f"itself anonymized (the audit's treatment), not the small and frame-cut faces under checks.small_face "
                 f"nor faces it masked. SSIM/PSNR/MSE against the original, whole "
                 f"image and face box. Fréchet distance over {e(FRECHET_NOTE)}. Pose error: where the run's detector "
                 f"still finds the face, dlib's 68-point landmarks (five ArcFace points) against the original's, over the "
                 f"eye distance: median, and the share within 5%.</p>")
    parts.append("<table><tr><th class='l'>group</th><th>detected (run's)</th><th>detected (second)</th>"
                 "<th>method's faces detected (run's / second)</th><th>SSIM image</th>"
                 "<th>SSIM face</th><th>SSIM outside faces</th><th>PSNR face dB</th><th>MSE face</th><th>Fréchet (HOG)</th>"
                 "<th>pose error median</th><th>pose &le; 5%</th></tr>")
    for g in metrics["groups"]:
        u = g["utility"]
        dr = u["detection_rate"]
        mf = dr["method_faces"]
        parts.append(
            f"<tr><td class='l'>{e(g['label'])}</td><td>{_fmt(dr['configured']['rate'], True)}</td>"
            f"<td>{_fmt(dr['second']['rate'], True)} ({_fmt(dr['second_on_originals']['rate'], True)}, n={dr['second']['n']})</td>"
            f"<td>{_fmt(mf['configured']['rate'], True)} / {_fmt(mf['second']['rate'], True)} (n={mf['configured']['n']})</td>"
            f"<td>{_fmt(u['image']['ssim'])}</td><td>{_fmt(u['face']['ssim'])}</td>"
            f"<td>{_fmt(u.get('outside_faces', {}).get('ssim'))}</td><td>{_fmt(u['face']['psnr'], nd=1)}</td>"
            f"<td>{_fmt(u['face']['mse'], nd=0)}</td><td>{_fmt(u['frechet']['value'], nd=2)}</td>"
            f"<td>{_fmt(u.get('pose', {}).get('median'), True)}</td>"
            f"<td>{_fmt(u.get('pose', {}).get('within_5pct'), True)} (n={u.get('pose', {}).get('n', 0)})</td></tr>")
    parts.append("</table>")

    if metrics["groups"]:
        parts.append(f"<h2>Privacy-utility curves</h2><figure><img alt='privacy-utility curves' src='{_png(curves_figure(metrics))}'>"
                     "<figcaption>T1 top-1 against detection rate and face SSIM; solid: dlib-resnet128, dashed: mobilefacenet."
                     "</figcaption></figure>")
        parts.append(f"<h2>Identity distance</h2><figure><img alt='identity distance distributions' "
                     f"src='{_png(distance_figure(metrics, groups))}'><figcaption>Distance between each original face and its "
                     "anonymized version; faces left of the red line are still the same person to that recognizer."
                     "</figcaption></figure>")

    parts.append("<h2>Contact sheets</h2>")
    for g in groups:
        if not g.records:
            continue
        sheet = _sheet(g.records[:SHEET_COLUMNS], originals)
        parts.append(f"<figure><img alt='contact sheet {e(g.label)}' src='{_png_array(sheet)}'><figcaption>{e(g.label)}: "
                     f"{'originals (top) and anonymized (bottom)' if originals else 'anonymized'}, first {min(SHEET_COLUMNS, len(g.records))} records"
                     "</figcaption></figure>")

    check = next((r["name"] for r in recs if r["used_by_checks"]), recs[0]["name"])
    allm = sorted(((m.dist[check], g.label, m) for g in groups for m in g.records), key=lambda x: x[0])[:WORST]
    if allm:
        parts.append(f"<h2>Worst cases</h2><p class='note'>The {len(allm)} anonymized faces closest to their original under "
                     f"{e(check)} (smallest identity distance), over all groups.</p><table><tr>")
        for dist, label, m in allm:
            pic = np.concatenate([_othumb(m), m.thumb], axis=1) if originals else m.thumb
            parts.append(f"<td class='l'><img alt='worst case' src='{_png_array(pic)}'><br>{e(label)}<br>"
                         f"record {e(m.record_id[:10])}<br>{check}: {dist:.3f}; "
                         + "; ".join(f"{k}: {v:.3f}" for k, v in m.dist.items() if k != check) + "</td>")
        parts.append("</tr></table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def json_compact(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


FRECHET_NOTE = "HOG features of aligned grey face crops (PCA, fitted on the originals); not Inception-FID"
