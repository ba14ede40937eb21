"""Training data, for a training folder and for the paper's scale alike: sources read lazily shard
by shard, mixed by weight in an order that is a pure function of (seed, sources, sample number), so
a run resumes at any step on any number of processes and consumes exactly the samples an
uninterrupted run would.

- ``recipe``: the YAML file (finetune options + ``sources:``);
- ``records``: one sample as read (its key, text fields and media) and the text conventions;
- ``sources``: webdataset tar shards, parquet files, LLaVA-style annotation files;
- ``folder``: a training folder (videos and ``annotations.jsonl``), surveyed row by row before step 1;
- ``json_list``, ``index_cache``: a big JSON list read item by item; file indexes kept for every process;
- ``order``: which sample the n-th one of a run is (shard order, shuffle windows, the mixture);
- ``tokens``, ``collate``: a conversation's token ids and labels; a padded micro-batch;
- ``dataset``: decoding and tokenising a sample in a loader worker, bad samples skipped;
- ``workers``: the loader's worker processes and the cores they share with the step;
- ``loader``: the batches of each process for each optimizer step; what was damaged or skipped.
"""
