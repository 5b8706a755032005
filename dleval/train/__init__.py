"""Training recipes: the tiny model (`tiny`), and later distillation and the Learn2PD filter.

Nothing in the evaluation path imports this package; it sits beside `dleval.run`.
"""
