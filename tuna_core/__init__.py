"""Tuna's shared core: the ideas both the API (`app/`) and the workers (`worker/`) depend on.

Each idea is defined here once, below both sides, so they cannot disagree:

* `dataset`         the dataset line formats (chat, completion, preference) and the chat messages
                    of an inference request: one schema, one set of error messages;
* `chat_template`   chat rendering: the text a model sees, in training and at inference;
* `base_models`     the base-model registry: names, aliases, context length, which folder;
* `hyperparameters` the hyperparameters, their ranges and defaults, precision choices;
* `model_ids`       `ft:` model ids and checkpoint ids;
* `model_folders`   a fine-tuned model folder's `tuna_model.json` (its base; LoRA or full);
* `exports`         what a model downloads as: formats, GGUF types, artifact names;
* `devices`         which torch device a run or an engine uses;
* `evals`           eval templates (``{{ item.x }}``) and graders: the check of a testing
                    criterion at creation, and the grading of one sample in a run.

Importable without torch, transformers or the web stack (FastAPI, pydantic, SQLAlchemy, Celery):
the few functions that need torch or transformers import them when called.  The import contract
in `pyproject.toml` (`[tool.importlinter]`) keeps it that way.
"""
