"""cogcot data: conversation records -> CogVLM training samples -> padded batches.

`ItemDataset` (subclassable, official CogVLM shape), `TextProcessor` (token layout and labels),
`ImageProcessor` (the ViT's image tensor), `DataCollator` (batches), `DatasetError` (bad input).
"""
from .collator import DataCollator, attention_mask_from_segments, data_collator
from .image_processor import ImageProcessor, load_image, vision_inputs
from .item_dataset import ItemDataset
from .records import DatasetError, Problem, Record, SampleDropped, SampleTooLong, Turn
from .text_processor import IGNORE_INDEX, TEMPLATES, TextProcessor

__all__ = [
    "ItemDataset", "TextProcessor", "ImageProcessor", "DataCollator", "data_collator",
    "attention_mask_from_segments", "load_image", "vision_inputs", "DatasetError", "SampleTooLong", "SampleDropped",
    "Problem", "Record", "Turn", "IGNORE_INDEX", "TEMPLATES",
]
