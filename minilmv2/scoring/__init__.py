"""Scoring a saved student: the fine-tuning tasks and their data, the metrics, and the sweep summary.

- `sentence_tasks`: GLUE and the offline sentence(-pair) tasks (tweet_sentiment, bbc_news), for hf_run_evaluation.py;
- `squad`: SQuAD v1.1/v2.0 windows and span search, for hf_run_squad.py;
- `seq2seq`: the UniLM-style mask, pseudo-masking and beam search, for hf_run_seq2seq.py;
- `metrics`: loads the `evaluate` modules shipped in minilmv2/metrics/, offline;
- `finetune`: the skeleton the three scripts share (model arguments, start-up checks, resume, train block, results);
- `sweep_summary`: run_eval.sh's table and heatmap of a learning-rate x epochs sweep.
"""
