"""notebooks/quickstart.ipynb, stored without outputs, runs top to bottom in a fresh kernel."""
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def test_the_quickstart_notebook_is_stored_without_outputs_and_runs():
    nb = nbformat.read(os.path.join(NOTEBOOKS, "quickstart.ipynb"), as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    # started where Jupyter starts it (notebooks/); a cell that raises fails the test with its traceback
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOKS}}).execute()
    outputs = [output for cell in code for output in cell.outputs]
    kinds = {kind for output in outputs for kind in output.get("data", {})}
    assert "image/png" in kinds  # the figures show inline
    assert "application/vnd.jupyter.widget-view+json" in kinds  # tqdm.auto's progress bar is a widget here
    text = "".join(output.get("text", "") for output in outputs)
    assert "trainable parameters: 199,706" in text and "final accuracy" in text
