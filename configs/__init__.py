"""dinoseg configs, one folder per system (installed as data under `dinoseg/configs`).

Each file defines `get_config(variant=None)`; its docstring holds the run command and the
`:tiny` CPU variant. Load them with `--config=configs/<system>/<file>.py[:variant]`.
"""
