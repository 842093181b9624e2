"""One table over several bench.json files (scripts/gpu_bench.sh):
``python -m peftds.bench.tables A.json B.json ...``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from peftds.bench.step import fmt_ratio


def merge_tables(paths: Sequence[str]) -> str:
    """Each file's variants (ms/step, peak memory, ratios to its floor and peft LoRA) and compile lines."""
    rows = []
    for p in paths:
        rec = json.loads(Path(p).read_text())
        rows.append(
            f"[{Path(p).stem}] model {rec['model']}  {rec['device_name']} {rec['dtype']}  batch {rec['batch_size']} "
            f"source {rec['source_len']} target {rec['target_len']}  median of {rec['steps']} steps"
        )
        rows.append(
            f"  {'variant':<34} {'trainable':>11} {'ms/step':>9} {'peak MB':>9} {'/floor':>7} {'/peft LoRA':>10}"
        )
        vs = rec["variants"]
        floor = vs.get("floor", {}).get("median_ms")
        peft = vs.get("peft_lora", {}).get("median_ms")
        for v in vs.values():
            mem = "-" if v.get("peak_mem_mb") is None else f"{v['peak_mem_mb']:.0f}"
            rf = fmt_ratio(v["median_ms"] / floor if floor else None)
            rp = fmt_ratio(v["median_ms"] / peft if peft else None)
            rows.append(
                f"  {v['label'][:34]:<34} {v['trainable_params']:>11,} {v['median_ms']:>9.1f} {mem:>9} {rf:>7} {rp:>10}"
            )
        comp = rec.get("compile") or {}
        for name, e in (comp.get("variants") or {}).items():
            o = e.get("outputs") or {}
            rows.append(
                f"  {name}: compile {e['compile_s']:.0f}s, recompiles {e['recompiles']}, eval loss rel "
                f"diff vs eager {o.get('loss_rel_diff', float('nan')):.1e}"
                + (" - NOT TIMED (recompiles every step)" if e.get("dropped") else "")
            )
        rc = rec["ratios"]
        if "design_compiled/floor" in rc:
            rows.append(
                f"  compiled design / eager floor {fmt_ratio(rc['design_compiled/floor'])}, compiled / eager "
                f"design {fmt_ratio(rc.get('design_compiled/design'))}"
            )
        rows.append("")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the merged table of the bench.json files given."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m peftds.bench.tables BENCH.json ...", file=sys.stderr)
        return 2
    print(merge_tables(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
