"""The online loop's roles: pure per-role logic plus thin Ray shells.

``GeneratorWorker``, ``SimulatorWorker`` and ``Learner`` are plain classes over a
:class:`dso.broker.Broker` and the settings, so the same code runs in-process
(tests), inside Ray actors (:mod:`dso.actors.ray_actors`) and in the standalone
``dso worker simulate`` process. Import Ray only through ``ray_actors``.
"""

from dso.actors.generator_worker import GeneratorWorker
from dso.actors.learner import Learner
from dso.actors.prompt_images import PromptImages, seed_default_prompts
from dso.actors.simulator_worker import SimulatorWorker

__all__ = ["GeneratorWorker", "Learner", "PromptImages", "SimulatorWorker", "seed_default_prompts"]
