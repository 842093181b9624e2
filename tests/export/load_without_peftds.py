"""Load exported models the way a user without peftds does, and write their logits.

Run as ``python -I load_without_peftds.py jobs.json report.json``: ``-I`` keeps PYTHONPATH and the
working directory off ``sys.path``, and a ``sys.meta_path`` guard makes every ``import peftds`` fail
(the editable install's finder would otherwise still find it). Each job loads a merged checkpoint with
``AutoModelFor...from_pretrained`` or a base model plus a peft adapter with ``PeftModel.from_pretrained``,
runs the saved inputs and saves the logits (in float32, and in float64 from the same weights); for
adapters it also reports every LoRA module's rank and scaling as peft built them.
"""

import importlib.abc
import json
import sys


class BlockPeftds(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "peftds" or name.startswith("peftds."):
            raise ImportError(f"{name} is blocked in this process")
        return None


sys.meta_path.insert(0, BlockPeftds())

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

with open(sys.argv[1]) as fh:
    jobs = json.load(fh)
report = {"jobs": {}}
try:
    import peftds  # noqa: F401

    report["peftds_importable"] = True
except ImportError:
    report["peftds_importable"] = False
for job in jobs:
    auto = getattr(transformers, job["auto"])
    labels = {"num_labels": job["num_labels"]} if job.get("num_labels") else {}
    entry = {}
    if job["format"] == "merged":
        model = auto.from_pretrained(job["path"])
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(auto.from_pretrained(job["base"], **labels), job["path"])
        lora = {n: m for n, m in model.get_base_model().named_modules() if hasattr(m, "lora_A") and "default" in m.r}
        entry["ranks"] = {n: m.r["default"] for n, m in lora.items()}
        entry["scalings"] = sorted({float(m.scaling["default"]) for m in lora.values()})
    model.eval()
    inputs = load_file(job["inputs"])
    with torch.no_grad():
        logits = {"float32": model(**inputs).logits.contiguous()}
        logits["float64"] = model.double()(**inputs).logits.contiguous()  # the same weights, exact arithmetic
    save_file(logits, job["logits"])
    entry["class"] = type(model).__name__
    report["jobs"][job["name"]] = entry
report["peftds_loaded"] = sorted(m for m in sys.modules if m == "peftds" or m.startswith("peftds."))
with open(sys.argv[2], "w") as fh:
    json.dump(report, fh)
