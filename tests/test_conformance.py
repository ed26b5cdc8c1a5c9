"""CONFORMANCE.md states what the code does: its SOP class table is the list the node accepts."""

import re
from pathlib import Path

from n2d_dicom.sop_classes import DENOISABLE_SOP_CLASSES

CONFORMANCE = Path(__file__).parents[1] / "CONFORMANCE.md"


def test_the_sop_class_table_lists_exactly_the_classes_denoised():
    listed = set(
        re.findall(
            r"^\| [^|]+ \| (1\.2\.840\.10008\.5\.1\.4\.1\.1[0-9.]*) \| Yes \| Yes \|$",
            CONFORMANCE.read_text(),
            re.MULTILINE,
        )
    )
    assert listed == DENOISABLE_SOP_CLASSES
