"""The report of ``bench_ssm.py``: the targets checked (:func:`eval_targets`) and the markdown
table of a results dict (:func:`to_markdown`)."""

from __future__ import annotations

from typing import Any

from bench_ssm_settings import (
    ALL_KINDS,
    B_TRAIN,
    D_MODEL,
    LABELS,
    NOISY_CORES,
    REFERENCE_NOTE,
    REFERENCE_POINTS,
    SLOW_KINDS,
    STEP_BATCHES,
)


def find(rows: list[dict], **kw) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and "error" not in r and "skipped" not in r:
            return r
    return None


def _status(rows: list[dict], v: float | None, ok: bool | None, **kw) -> str:
    if ok is not None:
        return "pass" if ok else "fail"
    match = [r for r in rows if all(r.get(k) == x for k, x in kw.items())]
    if any("error" in r for r in match):
        return "error"
    return "skipped" if any("skipped" in r for r in match) else "not measured"


def eval_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for kind, thr in (("s4d", 3.0), ("s5", 1.0), ("mamba", 1.0)):
        r = find(res["train"], kind=kind, L=1024)
        v = r["speedup_vs_gru"] if r else None
        out.append(
            {
                "name": f"{kind} training speedup vs nn.GRU at L=1024 >= {thr:g}",
                "kind": kind,
                "metric": "train.speedup_vs_gru",
                "L": 1024,
                "op": ">=",
                "threshold": thr,
                "value": v,
                "pass": None if v is None else v >= thr,
            }
        )
        out[-1]["status"] = _status(res["train"], v, out[-1]["pass"], kind=kind, L=1024)
    for kind in ("s4d", "s5", "mamba"):
        for b in STEP_BATCHES:
            r = find(res["step"], kind=kind, B=b)
            v = r["ratio_vs_grucell"] if r else None
            out.append(
                {
                    "name": f"{kind} step latency / nn.GRUCell at B={b} <= 1.5",
                    "kind": kind,
                    "metric": "step.ratio_vs_grucell",
                    "B": b,
                    "op": "<=",
                    "threshold": 1.5,
                    "value": v,
                    "pass": None if v is None else v <= 1.5,
                }
            )
            out[-1]["status"] = _status(res["step"], v, out[-1]["pass"], kind=kind, B=b)
    return out


# -- markdown -------------------------------------------------------------------------------------
def f(v: Any, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def ratio_fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}x" if v >= 0.095 else f"{v:.3g}x"


def cell_state(r: dict | None) -> str:
    return "—" if r is None else "error" if "error" in r else "skipped"


def star(r: dict) -> str:
    return "\\*" if r.get("noisy") else ""


def to_markdown(res: dict[str, Any]) -> str:
    mi, gi, st = res["machine"], res["git"], res["settings"]
    L_all = sorted({r["L"] for r in res["train"]})
    pooled_txt = (
        ", ".join(f"L={L}: {v:.1f} ms" for L, v in res.get("train_gru_pooled_ms", {}).items())
        or "n/a"
    )
    S_mem = ", ".join(f"L={L}" for L in st.get("memory_torch_ref_lengths", [])) or "none"
    S_mem += f", and only where one timed pass took <= {st.get('memory_slow_max_s', 0):g} s"
    kinds = [k for k in ALL_KINDS if k in st["kinds"]]
    lines = [
        "# ssm benchmark vs torch GRU",
        "",
        f"- command: `{res['command']}`",
        f"- when: {res['timestamp_utc']} ({res.get('wall_s', 0):.0f} s wall)"
        + ("" if res.get("complete") else " — INCOMPLETE"),
        f"- commit: `{gi['commit']}`"
        + (
            f" (dirty, diff sha1 {gi['diff_sha1']}; changed: {', '.join(gi['changed_files'][:8])})"
            if gi["dirty"]
            else " (clean)"
        ),
        f"- machine: {mi['cpu_model']}, nproc={mi['nproc']}, torch {mi['torch_version']} "
        f"({mi['torch_num_threads']} threads), fused CPU kernel: "
        f"{'yes' if mi.get('ssm_cpu_ext') else 'NO'}",
        f"- load average at start/end: {res['loadavg_start']} / {res.get('loadavg_end')}; "
        f"other processes used {f(res.get('foreign_load_cores'), '.2f')} cores on average "
        f"during the run; samples taken while they used > {NOISY_CORES} cores were retaken "
        f"({res.get('retry_spent_s', 0):.0f} s spent; waited {res.get('waited_for_quiet_s', 0):.0f}"
        f" s for quiet); \\* marks cells that still kept such samples",
        "",
        f"## Training pass (fwd + bwd of y.sum()), B={B_TRAIN}, D={D_MODEL}",
        "",
        "speedup = t(nn.GRU) / t(kind), GRU timed interleaved with each kind; ms = median. "
        "In parentheses: the speedup against the median of all GRU samples at that L "
        f"({pooled_txt}); the targets use the interleaved one.",
        "",
    ]
    hdr = "| kind |" + "".join(f" L={L} ms | GRU ms | speedup |" for L in L_all)
    lines += [hdr, "|---|" + "---:|---:|---:|" * len(L_all)]
    for k in kinds:
        row = f"| {LABELS[k]} |"
        for L in L_all:
            r = next((r for r in res["train"] if r["kind"] == k and r["L"] == L), None)
            if r is None:
                row += " — | — | — |"
            elif "error" in r or "skipped" in r:
                row += f" {'error' if 'error' in r else 'skipped'} | — | — |"
            else:
                n_done = r.get("samples_kept", r.get("repeats"))
                rep = f" (n={n_done})" if k in SLOW_KINDS or r.get("cut_short_by_deadline") else ""
                row += (
                    f" {f(r['ms'])}{rep} | {f(r['gru_ms'])} | "
                    f"**{ratio_fmt(r['speedup_vs_gru'])}**{star(r)} "
                    f"({ratio_fmt(r.get('speedup_vs_gru_pooled'))}) |"
                )
        lines.append(row)

    lines += [
        "",
        "### Mamba at L=1024 vs nn.GRU (speed as a multiple of GRU's)",
        "",
        "| implementation | speedup vs GRU | source |",
        "|---|---:|---|",
    ]
    for k in ("mamba", "mamba_torch", "mamba_chunked", "mamba2"):
        r = find(res["train"], kind=k, L=1024)
        if k in kinds:
            lines.append(
                f"| ssm {LABELS[k]} | {ratio_fmt(r['speedup_vs_gru'] if r else None)} "
                "| measured here |"
            )
    for p in REFERENCE_POINTS:
        v = ("~" if p.get("approx") else "") + ratio_fmt(p["speedup_vs_gru"])
        lines.append(f"| {p['name']} | {v} | reference point (not measured here) |")
    lines += ["", f"_{REFERENCE_NOTE}_", ""]
    cvr = res.get("chunked_vs_reference") or {}
    if cvr:
        lines += [
            "### The chunked torch scan vs the per-step reference loop (Mamba, same run)",
            "",
            "speedup = t(backend=torch) / t(backend=chunked); via GRU = the ratio of their "
            "speedups against the GRU each was interleaved with (corrects for load drift).",
            "",
            "| L | speedup | via GRU |",
            "|---:|---:|---:|",
        ]
        for L, v in cvr.items():
            lines.append(
                f"| {L} | **{ratio_fmt(v['speedup'])}** | {ratio_fmt(v['speedup_via_gru'])} |"
            )
        lines.append("")

    lines += [
        "## Step latency (inference_mode), D=64",
        "",
        "ratio = t(kind.step) / t(nn.GRUCell); µs = median per step.",
        "",
    ]
    bs = sorted({r["B"] for r in res["step"]}) or list(STEP_BATCHES)
    lines += [
        "| kind |" + "".join(f" B={b} µs | GRUCell µs | ratio |" for b in bs),
        "|---|" + "---:|---:|---:|" * len(bs),
    ]
    for k in kinds:
        if not any(r["kind"] == k for r in res["step"]):
            continue
        row = f"| {LABELS[k]} |"
        for b in bs:
            r = next((r for r in res["step"] if r["kind"] == k and r["B"] == b), None)
            if r is None or "error" in r or "skipped" in r:
                row += f" {cell_state(r)} | — | — |"
            else:
                row += (
                    f" {f(r['us'])} | {f(r['grucell_us'])} | "
                    f"**{r['ratio_vs_grucell']:.2f}**{star(r)} |"
                )
        lines.append(row)

    lines += [
        "",
        f"## Peak memory of one training pass, B={B_TRAIN}, D={D_MODEL}",
        "",
        "peak RSS increase during the pass (MiB), fresh subprocess per cell; "
        "see JSON memory.method. The torch-reference Mamba is measured only at the "
        f"lengths in settings.memory_torch_ref_lengths ({S_mem}).",
        "",
    ]
    mem = res["memory"]["rows"]
    Lm = sorted({r["L"] for r in mem})
    if not mem:
        lines.append("(not measured: --skip-memory)")
    if mem:
        lines += [
            "| kind |" + "".join(f" L={L} MiB | vs GRU |" for L in Lm),
            "|---|" + "---:|---:|" * len(Lm),
        ]
    for k in ("gru_baseline",) + tuple(kinds):
        if not any(r["kind"] == k for r in mem):
            continue
        row = f"| {LABELS[k]} |"
        for L in Lm:
            r = next((r for r in mem if r["kind"] == k and r["L"] == L), None)
            g = find(mem, kind="gru_baseline", L=L)
            if r is None or "error" in r or "skipped" in r:
                row += f" {cell_state(r)} | — |"
            else:
                rel = (
                    f"{r['peak_delta_mib'] / g['peak_delta_mib']:.2f}x"
                    if g and g["peak_delta_mib"] > 0
                    else "—"
                )
                row += f" {f(r['peak_delta_mib'])}{star(r)} | {rel} |"
        lines.append(row)

    lines += ["", "## Targets", "", "| target | value | result |", "|---|---:|:---:|"]
    for t in res["targets"]:
        verdict = {"pass": "PASS", "fail": "**FAIL**"}.get(t["status"], t["status"])
        lines.append(f"| {t['name']} | {f(t['value'], '.2f')} | {verdict} |")
    for title, key in (("Errors", "errors"), ("Warnings", "warnings")):
        if res.get(key):
            lines += ["", f"## {title}", ""] + [f"- {e}" for e in res[key]]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------
