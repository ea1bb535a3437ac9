"""cogcot finetune package."""
