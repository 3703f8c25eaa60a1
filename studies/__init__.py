"""Studies: a paper's table as data. A study file (``studies/<name>.toml``) lists named
configurations (train.py flags, inference options, ensembles and UpKern sources) and the
evaluation; ``python -m studies run NAME`` builds the train/infer/eval commands from it
(``commands``), runs them as subprocesses, resumably (``runner``), and writes the table, plot and
report (``table``, ``report``). Nothing here is imported by the library."""
