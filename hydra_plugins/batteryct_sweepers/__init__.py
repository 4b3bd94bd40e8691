"""Hydra plugins of batteryct (Hydra finds sweepers only in the ``hydra_plugins`` package).

``ResumableOptunaSweeper``: Hydra's Optuna sweeper, resumable from its SQLite study; it exists
when the Optuna sweeper is installed (``pip install '.[track]'``).
"""

from __future__ import annotations

import logging
from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # without the track extra there is nothing to register
    OptunaSweeper = None

log = logging.getLogger(__name__)

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """Hydra's Optuna sweeper whose study, kept in persistent ``storage`` (SQLite) under a fixed
        ``study_name``, continues when the same command is run again after an interruption.

        Before sweeping it loads the study when it exists: finished trials (complete, pruned,
        failed) count towards ``n_trials``; trials still RUNNING (cut off by the interruption) are
        marked FAIL and queued again with the same parameters; job numbers, and so the job folders
        of a fixed ``hydra.sweep.dir``, continue after the earlier trials; a seeded sampler
        continues with ``seed + trials so far`` (restarted with its first seed it would propose
        the first trials again). SQLite's folder is created.
        """

        def sweep(self, arguments: list[str]) -> None:
            import optuna
            from optuna.trial import TrialState

            impl = self.sweeper
            storage = str(impl.storage or "")
            if storage.startswith("sqlite:///"):  # SQLite does not create folders
                Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            if storage and impl.study_name:
                try:
                    study = optuna.load_study(study_name=impl.study_name, storage=storage)
                except KeyError:
                    study = None
                if study is not None:
                    trials = study.get_trials(deepcopy=True)
                    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
                    cut_off = [t for t in trials if t.state == TrialState.RUNNING]
                    for trial in cut_off:  # interrupted: failed, and queued again with its parameters
                        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
                        study.enqueue_trial(trial.params)
                    sampler_cfg = impl.config.hydra.sweeper.get("sampler")
                    if trials and sampler_cfg is not None and sampler_cfg.get("seed") is not None \
                            and not sampler_cfg.get("_partial_", False):
                        # a seeded sampler restarted with its first seed would propose the
                        # first trials again: continue with seed + trials so far (reproducible)
                        from hydra.utils import instantiate

                        impl.sampler = instantiate(sampler_cfg, seed=int(sampler_cfg.seed) + len(trials))
                    impl.n_trials = max(int(impl.n_trials) - finished, 0)
                    impl.job_idx = len(trials)  # job folders continue after the earlier ones
                    log.info("Optuna study %r resumed from %s: %d trials finished, %d cut off and "
                             "queued again, %d to go", impl.study_name, storage, finished,
                             len(cut_off), impl.n_trials)
            return super().sweep(arguments)
