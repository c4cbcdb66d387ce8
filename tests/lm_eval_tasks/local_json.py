"""The tasks' datasets: JSONL files beside this module, read with the datasets library's own
``json`` builder (no network). A path in a task YAML's ``dataset_kwargs.data_files`` would be
resolved against the working directory, so the tasks name their file and this resolves it here."""

from pathlib import Path


def load(data_file, **_):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(Path(__file__).parent / data_file)})
