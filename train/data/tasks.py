"""The embedded tasks now live in infer/eval/tasks.py (evaluation needs them; infer never imports train)."""

from infer.eval.tasks import *  # noqa: F401,F403
from infer.eval.tasks import __all__  # noqa: F401
