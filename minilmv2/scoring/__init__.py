"""Scoring a saved student: the fine-tuning tasks and their data, the metrics, and the sweep summary.

- `sentence_tasks`: GLUE and the offline sentence(-pair) tasks (tweet_sentiment, bbc_news), for hf_run_evaluation.py;
- `squad`: SQuAD v1.1/v2.0 windows and span search, for hf_run_squad.py;
- `seq2seq`: the UniLM-style mask, pseudo-masking and beam search, for hf_run_seq2seq.py;
- `metrics`: loads the `evaluate` modules kept in the repository's metrics/ folder, offline;
- `finetune_checks`: the start-up checks the three scripts share;
- `sweep_summary`: run_eval.sh's table and heatmap of a learning-rate x epochs sweep.
"""
