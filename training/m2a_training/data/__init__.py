"""Training data: Cityscapes reader, augmentation, AnomalyMix and the synthetic road world.

Modules (imported explicitly; this package imports nothing so that each stays cheap to load):
- `cityscapes`: reader, mask targets (semantic / mask_split / panoptic), batch collation;
- `augment`: official and large-scale-jitter augmentation keeping M_OOD aligned;
- `anomaly_mix`: the COCO outlier pool and the official AnomalyMix paste;
- `synthetic`: generator of a small Cityscapes-format world, COCO outliers and anomaly scenes.
"""
