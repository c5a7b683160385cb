"""Data: everything between raw files and frame shards (the layer above ``core``).

Annotation formats, video decoding, frame extraction into Arrow shards, JPEG, soft labels, EgoClip+ captions,
the synthetic sample and the Ray cluster that decodes at scale. Imports only ``core``; never torch at import
time, so the frames stage and its decode workers stay light."""
