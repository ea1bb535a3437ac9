"""Example `ItemDataset` subclass from the README: a folder of images whose file names are the labels
(the official CogVLM CAPTCHA demo's layout). Subclasses override `load_data` and `__getitem__` only."""
from __future__ import annotations

import os

from dataset import ItemDataset


class FolderLabelDataset(ItemDataset):
    """`captcha/3xk9q.png` -> the image, prompt "CAPTCHA:", answer "3xk9q"."""

    prompt = "CAPTCHA:"

    def load_data(self, data_path):
        names = sorted(f for f in os.listdir(data_path) if f.lower().endswith((".png", ".jpg", ".jpeg")))
        return [os.path.join(data_path, f) for f in names]

    def __getitem__(self, index):
        path = self.data[index]
        label = os.path.splitext(os.path.basename(path))[0]
        image = self.load_image(path)  # a clear DatasetError naming the file if it cannot be read
        return {**self.process_img(image), **self.process_text(label, self.prompt), "question_id": label}
