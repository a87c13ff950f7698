from .backbone import BACKBONE_PRESETS, Backbone, build_preset, load_backbone, resolve_backbone  # noqa: F401
