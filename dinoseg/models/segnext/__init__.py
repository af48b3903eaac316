"""SegNext (uncbiag/SegNext): interactive segmentation with clicks, boxes and scribbles.

Modules: prompts (prompt containers and dense maps), resize (model frame <-> original frame),
neck (SimpleFPN), head (SegFormer head), model (`SegNext` with `embed_image` / `predict`),
loss (normalized focal loss), clicker (RITM click simulator), sampler (training prompts),
predictor (host-side interactive session), predict (`dinoseg.load`'s predictor), task (trainer plug-in
and weights converter), convert (checkpoints).
Import the submodules directly; this package imports nothing heavy.
"""
