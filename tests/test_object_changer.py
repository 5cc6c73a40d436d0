"""Manual object changer: prompts the operator and waits for an explicit answer."""

import numpy as np
import pytest

from instruments.errors import ObjectChangeAborted
from instruments.object_changer import ManualObjectChanger, ObjectChanger, ascii_preview


def scripted(answers):
    answers = list(answers)
    prompts, shown = [], []

    def input_fn(prompt):
        prompts.append(prompt)
        if not answers:
            raise EOFError
        return answers.pop(0)

    return input_fn, shown.append, prompts, shown


@pytest.mark.parametrize("answer", ["", "y", "Y", " yes "])
def test_enter_or_y_confirms_the_mount(answer):
    input_fn, output_fn, prompts, shown = scripted([answer])
    changer = ManualObjectChanger(input_fn, output_fn)
    changer.mount("digit-7")
    assert len(prompts) == 1 and "digit-7" in shown[0] and changer.mounted == "digit-7"


def test_q_aborts_with_a_clear_exception_naming_the_object():
    input_fn, output_fn, _, _ = scripted(["q"])
    with pytest.raises(ObjectChangeAborted, match="digit-3"):
        ManualObjectChanger(input_fn, output_fn).mount("digit-3")


def test_other_answers_ask_again_until_confirmed():
    input_fn, output_fn, prompts, _ = scripted(["n", "later", "y"])
    ManualObjectChanger(input_fn, output_fn).mount("digit-1")
    assert len(prompts) == 3


def test_end_of_input_aborts_instead_of_assuming_the_object_is_mounted():
    input_fn, output_fn, _, _ = scripted([])
    changer = ManualObjectChanger(input_fn, output_fn)
    with pytest.raises(ObjectChangeAborted):
        changer.mount("digit-0")
    assert changer.mounted is None


def test_the_expected_mask_is_shown_top_row_up_to_check_orientation():
    image = np.zeros((8, 8))
    image[0, :] = 1.0  # bright top row
    input_fn, output_fn, _, shown = scripted(["y"])
    ManualObjectChanger(input_fn, output_fn).mount("bar", image)
    preview_lines = ascii_preview(image).splitlines()
    assert preview_lines[0] == "#" * 8 and set(preview_lines[1]) == {" "}
    assert ascii_preview(image) in "\n".join(shown)


def test_object_changer_is_an_abstract_interface():
    with pytest.raises(TypeError):
        ObjectChanger()
