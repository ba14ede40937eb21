"""Training data at the paper's scale: sources read lazily shard by shard, mixed by weight in an
order that is a pure function of (seed, recipe, sample number), so a run resumes at any step on any
number of processes and consumes exactly the samples an uninterrupted run would.

- ``recipe``: the YAML file (finetune options + ``sources:``);
- ``records``: one sample as read (its key, text fields and media) and the text conventions;
- ``sources``: webdataset tar shards, parquet files, LLaVA-style annotation files;
- ``order``: which sample the n-th one of a run is (shard order, shuffle windows, the mixture);
- ``dataset``: decoding and tokenising a sample in a loader worker, bad samples skipped;
- ``loader``: the batches of each process for each optimizer step.
"""
