"""Data protection over the whole box: where personal data lives (report), and the operations on it."""
