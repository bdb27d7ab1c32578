"""The Markdown model card of a released model (``capsule_classifier/release.py --card``), written from the
release's provenance record alone, so no number in it is typed by hand."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.out_of_scope_set import SOURCES


def _spread(stats: dict[str, float] | None) -> str:
    return "-" if stats is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def model_card(record: dict[str, Any]) -> str:
    """A Markdown model card of a release, every number taken from its provenance ``record``."""
    cv, train, model = record["cross_validation"], record["training"], record["model"]
    trust, names, detection = cv["trust"], model["class_names"], record["out_of_scope"]
    per_trust = {row["fold"]: row for row in trust["per_fold"]}
    sources = [s for s in SOURCES if f"auroc_{s}" in trust]
    f1 = {name: cv["test"]["per_class"][name]["f1"] for name in names}
    rows = [f"| {r['fold']} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | "
            + " | ".join(f"{r['test_f1'][n]:.3f}" for n in names)
            + f" | {per_trust[r['fold']]['test_ece_after']:.3f} | {per_trust[r['fold']]['test_false_reject']:.3f} |"
            for r in cv["per_fold"]]
    rows.append(f"| mean ± SD | {_spread(cv['test']['accuracy'])} | {_spread(cv['test']['macro_f1'])} | "
                + " | ".join(_spread(f1[n]) for n in names)
                + f" | {_spread(trust['test_ece_after'])} | {_spread(trust['test_false_reject'])} |")
    geometry = ("crop to the head, pad to a square, add figshare's margin, resize" if model["geometry"] == "canonical"
                else "stretch the whole image")
    lines = [
        f"# Model card: {Path(record['files']['onnx']).stem}", "",
        f"`{Path(record['files']['onnx']).name}` (and `{Path(record['files']['pt']).name}`): a {model['name']} that "
        f"classifies one T1-weighted contrast-enhanced (T1-CE) MRI slice as {', '.join(names)}, or answers "
        f"\"out of scope\". Released by `capsule_classifier/release.py` from the cross-validation study "
        f"`{cv['study']}` (folds {', '.join(map(str, cv['folds']))}) at commit `{record['git_commit']}` on "
        f"{record['finished_at']}.", "",
        "## Intended use", "",
        "Research and teaching on brain-tumour MRI classification. It is not a medical device and not for "
        "diagnosis: it was never validated clinically, and the numbers below come from one public data set. It "
        "assumes the slice shows one of these tumour types; it has no \"no tumour\" answer.", "",
        "## Training data and preprocessing", "",
        f"The figshare brain-tumour data set (Cheng et al.; CC BY 4.0): {train['slices']} T1-CE slices (axial, "
        f"sagittal and coronal) of {train['patients']} patients ("
        + ", ".join(f"{name} {count}" for name, count in train["class_counts"].items())
        + f"), data fingerprint `{train['data_fingerprint']}`. Every slice, in training and in prediction, goes "
        f"through `datasets.transforms.preprocess_slice` in the `{model['geometry']}` geometry ({geometry} to "
        f"{model['image_size']} px) with robust intensity scaling. The released model was trained on every patient "
        f"for {record['epochs']['value']} epochs ({record['epochs']['rule']}; selected epochs "
        f"{record['epochs']['selected']}), with the study's settings and seed {train['seed']}. Network settings: "
        + ", ".join(f"`{key}={value}`" for key, value in sorted(model["kwargs"].items())) + ".", "",
        "## Cross-validated performance", "",
        f"Each fold's model was trained on the other folds' patients, selected and calibrated on validation "
        f"patients and tested once on its test patients ({cv['split']} split, patient-wise; {len(cv['folds'])} of its "
        f"{cv['k']} folds). The released model saw every patient: these numbers estimate it, they do not measure "
        "it." + (f" The peak of the explanation map falls inside the tumour (pointing game) on "
                 f"{_spread(trust.get('pointing_game'))} of the test slices."
                 if "pointing_game" in trust else ""), "",
        "| fold | accuracy | macro-F1 | " + " | ".join(f"F1 {n}" for n in names)
        + " | test ECE (calibrated) | test false rejects |", "|---" * (5 + len(names)) + "|", *rows, "",
        "## Calibration", "",
        f"Temperature {record['calibration']['temperature']:.4g}, the {record['calibration']['rule']}: "
        f"{', '.join(f'{t:.4g}' for t in record['calibration']['folds'])}. Over the folds, test ECE "
        f"{_spread(trust['test_ece_before'])} before and {_spread(trust['test_ece_after'])} after calibration.", "",
        "## Out of scope", "",
        f"Score: {detection['score']} distance of the pooled features of `{', '.join(detection['layers'])}` to the "
        f"nearest class of the training slices; above {detection['threshold']:.4g} the answer is \"out of scope\". "
        f"Threshold: {detection['rule']} (r = {detection['median_train_false_reject']:.4f}; the released model "
        f"answers \"out of scope\" for {detection['train_false_reject']:.4f} of its training slices). Over the folds, "
        f"in-scope test slices answered \"out of scope\": {_spread(trust['test_false_reject'])}.", "",
        "| out-of-scope source | AUROC against test slices | share caught |", "|---|---|---|",
        *[f"| {s} | {_spread(trust[f'auroc_{s}'])} | {_spread(cv['caught'].get(s))} |" for s in sources], "",
        "## Known failure modes", "",
        "- Images from other hospitals and scanners: the shared external glioma check (BraTS and TCGA T1-CE "
        "slices, `python -m datasets.external_glioma`) is mostly answered \"out of scope\"; what is answered may "
        "still be wrong. Check a new site with `capsule_classifier/evaluate.py` first.",
        "- Healthy brains and slices without a tumour: there is no such class; those the detector lets through get "
        "a tumour type" + (f" (AUROC {_spread(trust['auroc_healthy_brain'])} against the test slices)."
                           if "auroc_healthy_brain" in trust else "; the study's out-of-scope set held none."),
        "- Anything but a T1-CE axial, sagittal or coronal slice (T1, T2, FLAIR, volumes, photographs, annotated "
        f"screenshots): rejected or wrong. The weakest class is {min(f1, key=lambda n: f1[n]['mean'])} (lowest F1 "
        "above).", "",
        "## Licence", "",
        "Training data: figshare brain-tumour dataset (Jun Cheng), CC BY 4.0: credit it when you use this model. "
        "Code: MIT.", "",
        "## Provenance", "",
        f"Study `{cv['study']}`; data `{train['source']}`; commit `{record['git_commit']}`; release run "
        f"{train['wall_time_s']:.0f} s on {train['device']['device']}; ONNX parity "
        f"{record['export']['max_abs_probability_difference']:.2g} (tolerance {record['export']['tolerance']:g}) on "
        f"{record['export']['parity_slices']} sample slices. Everything above is read from "
        f"`{Path(record['files']['onnx']).with_suffix('.json').name}`.", ""]
    return "\n".join(lines)
