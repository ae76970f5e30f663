"""The engine's messages in the panel's words: what to do in the Slicer panel instead of a command-line flag.

The engine speaks to the command line ("pass --force", "Give --thickness"); the panel shows the same message with
the panel's own control named instead. Standard library only (the panel imports it before its requirements).
"""

from __future__ import annotations

import re

# What a command-line flag is called in the panel (the field's label and where it sits).
PANEL_CONTROLS = {
    "--thickness": "'Slice thickness'",
    "--increment": "'Slice increment'",
    "--profile": "'Slice profile'",
    "--preset": "'Preset'",
    "--device": "'Device'",
    "--iterations": "'Training iterations' (Advanced)",
    "--seed": "'Random seed' (Advanced)",
    "--target-spacing": "'Output spacing' (Advanced)",
    "--threads": "the threads option of logic.process()",
    "--consistency-lambda": "the consistencyLambda option of logic.process()",
    "--consistency": "the consistency option of logic.process()",
    "--allow-non-hu": "'Not CT in HU' (Advanced)",
    "--force": "'Run anyway'",
    "--model": "'Model'",
    "--save-model": "'Save the trained model'",
    "--precision": "the precision option of logic.process()",
    "--training-noise": "the training_noise option of logic.process()",
    "--dicom-template": "an input loaded from DICOM",
}

# Whole phrases that read better rewritten than with the control's name dropped in (applied first, in order).
PANEL_PHRASES = (
    (r"or pass --force to try anyway", "or tick 'Run anyway' under the cost read-out to try anyway"),
    (r"Pass --allow-non-hu to enhance it anyway", "Tick 'Not CT in HU' (Advanced) to enhance it anyway"),
    (r"or pass --allow-non-hu", "or tick 'Not CT in HU' (Advanced)"),
    (r"Give --thickness for the best result", "Type the protocol's thickness in 'Slice thickness' for the best result"),
    (r"train a new one \(omit --model\)", "train a new one (set 'Model' to 'Train a new model')"),
    (r"train a new model for this scan \(omit --model\)",
     "train a new model for this scan (set 'Model' to 'Train a new model')"),
    (r"\(omit --model\)", "(set 'Model' to 'Train a new model')"),
    (r"correct --thickness/--increment", "correct 'Slice thickness' and 'Slice increment'"),
    (r"check --thickness and --increment", "check 'Slice thickness' and 'Slice increment'"),
    (r"try more --iterations", "try more 'Training iterations' (Advanced)"),
    (r"give --dicom-template DIR \([^)]*\)", "load the input from DICOM"),
    (r"convert the series to NRRD and give --thickness", "type the thickness in 'Slice thickness'"),
    (r"pass --allow-external-data if you trust it", "load the volume into Slicer first"),
    (r"\. Choose another path or pass --overwrite", ": choose another file"),
    (r"([Cc]hoose another [a-z]+) or pass --overwrite", r"\1"),
    (r" \(--overwrite never replaces a folder\)", ""),
    (r" \(or pass --format dicom for a DICOM series folder\)", ""),  # the panel exports DICOM with its own button
    (r"--overwrite replaces only a folder holding one DICOM series, and ", "only a folder holding one DICOM series is "
     "replaced, and "),
    (r"use --precision auto or fp32", "use precision 'auto' or 'fp32' in logic.process()"),
)
FLAG = re.compile(r"--[a-z][a-z-]*[a-z]")


def panel_text(message: str) -> str:
    """message with every command-line flag replaced by the panel control that does the same."""
    for pattern, replacement in PANEL_PHRASES:
        message = re.sub(pattern, replacement, message)
    return FLAG.sub(lambda match: PANEL_CONTROLS.get(match.group(0), match.group(0)), message)


# Labels and tooltips the panel shows for the options' data values (the parameter node keeps the values).
CHOICE_LABELS = {
    "device": {"auto": ("Automatic", "The GPU when PyTorch can use one, else the CPU."),
               "cpu": ("CPU", "Always the CPU: slower, and reproducible for a given seed and thread count."),
               "cuda": ("NVIDIA GPU", "An NVIDIA GPU through CUDA; refused when PyTorch cannot use one."),
               "mps": ("Apple GPU", "The GPU of an Apple silicon Mac (Metal Performance Shaders).")},
    "preset": {"fast": ("Fast (minutes on a CPU)", "A small CNN trained on 64 x 64 patches: most of the gain in "
                                                    "minutes on a CPU, seconds on a GPU."),
               "paper": ("Paper (hours, GPU)", "The published method: MS-D network, full images, 200 epochs. "
                                               "Hours even on a GPU; not for a CPU.")},
    "profile": {"box": ("Box", "The textbook slice model: every point within the slice counts equally, nothing "
                               "outside it. Real helical scans have tails; use it for scans known to be box-shaped."),
                "gaussian": ("Gaussian", "A smooth slice profile with the same full width at half maximum."),
                "blurred-box": ("Blurred box", "The default: a bell-shaped slice as helical scanners make it, the same "
                                               "full width at half maximum, tails to 1.7 times it at a tenth of the "
                                               "maximum."),
                "auto": ("Estimate from the scan", "Measure the slice profile from the scan's own statistics (a few "
                                                   "seconds); the default blurred box of the nominal thickness, with a warning, where the measurement "
                                                   "cannot be trusted.")},
}
SOURCE_LABELS = {"dicom": "from DICOM", "geometry": "from slice positions", "assumed": "assumed", "user": "your value"}


def choice_label(option: str, value: str) -> tuple[str, str]:
    """(label, tooltip) of an option's data value; the value itself where none is defined."""
    return CHOICE_LABELS.get(option, {}).get(value, (value, ""))


def source_label(source: str) -> str:
    """Where a number came from, in words ("from DICOM", "your value")."""
    return SOURCE_LABELS.get(source, source)
