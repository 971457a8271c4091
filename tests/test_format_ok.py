"""`format_ok` needs the SOP's steps in order *with their content* (order id, amount), not just the markers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("sopmoe_task_utils", Path(__file__).parents[1] / "tasks" / "utils.py")
utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(utils)

REF = "步骤1:核实订单D0652;步骤2:退款金额12*3-7=36-7=29元;步骤3:原路退回;步骤4:告知杨女士三个工作日到账"


def test_markers_alone_are_not_the_format():
    assert utils.format_ok(REF, REF) == 1
    assert utils.format_ok("步骤1步骤2步骤3步骤4", REF) == 0
    assert utils.format_ok("步骤1:;步骤2:;步骤3:;步骤4:", REF) == 0


def test_content_must_carry_the_order_id_and_the_amount():
    assert utils.format_ok(REF.replace("29元", "30元"), REF) == 0
    assert utils.format_ok(REF.replace("D0652", "D0653"), REF) == 0
    assert utils.format_ok(REF.replace("原路退回", "退回"), REF) == 1  # wording may differ; content may not
    assert utils.format_ok(REF.replace("步骤3", "步骤4", 1), REF) == 0  # order


def test_english_steps():
    ref = "Step 1: Verify order U9729. Step 2: Refund $127. Step 3: Notify the customer."
    assert utils.format_ok(ref, ref) == 1
    assert utils.format_ok(ref.replace("$127", "$12"), ref) == 0
