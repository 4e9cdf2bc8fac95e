"""What a build reads besides the stages' outputs: the spec's data (calibration, evaluation, prune.train), the
model (built, or pruned), and their digests for the cache keys. Loaded lazily, on first use, so a fully cached
build touches as little as possible; kept apart from the graph because none of it depends on the nodes.
"""

from functools import cached_property

from .digest import sha256_arrays, sha256_file, sha256_json, sha256_sources
from .imports import module_sources
from .spec import is_callable_ref


class BuildInputs:
    """Mixed into Pipeline (pipeline.py): uses its spec, label_prefix and entries."""

    @cached_property
    def metric_params(self) -> dict:
        """Each output's metric, and the code of any user metric, for the keys of the stages that compute them."""
        s = self.spec
        user = sorted({o.metric for o in s.outputs if is_callable_ref(o.metric)})
        code = sha256_sources([p for ref in user for p in module_sources(ref, s.python_path)]) if user else None
        return {"output_metrics": [[o.name, o.metric] for o in s.outputs], "metric_code": code}

    @cached_property
    def calibration(self):
        from .data import check_inputs, load_arrays

        arrays = load_arrays(self.spec.calibration, self.spec, "calibration")
        check_inputs(arrays, self.spec, f"calibration data ({self.spec.calibration})")
        return arrays

    @cached_property
    def evaluation(self):
        from .data import check_inputs, load_arrays

        arrays = load_arrays(self.spec.evaluation, self.spec, "evaluation")
        check_inputs(arrays, self.spec, f"evaluation data ({self.spec.evaluation})",
                     evaluation=True)
        return arrays

    def _data_digest(self, ref, loader):
        return sha256_arrays(loader()) if is_callable_ref(ref) else sha256_file(self.spec.resolve(ref))

    @cached_property
    def calibration_digest(self):
        return self._data_digest(self.spec.calibration, lambda: self.calibration)

    @cached_property
    def evaluation_digest(self):
        return self._data_digest(self.spec.evaluation, lambda: self.evaluation)

    @cached_property
    def weights_digest(self):
        return sha256_file(self.spec.weights)

    @cached_property
    def base_model_digest(self):
        s = self.spec
        code = sha256_sources(module_sources(s.factory, s.python_path))
        return sha256_json({"factory": s.factory, "args": s.factory_args, "code": code,
                            "weights": self.weights_digest})

    @cached_property
    def model_digest(self):
        """The model that is traced: the spec's model, or its pruned form (then the prune output's digest)."""
        if self.spec.prune is None:
            return self.base_model_digest
        from .stages import prune

        return sha256_json({"base": self.base_model_digest, "pruned": self.prune_entry.digest(prune.OUTPUT)})

    @cached_property
    def base_model(self):
        from .modelload import build_model

        return build_model(self.spec)

    @cached_property
    def torch_model(self):
        if self.spec.prune is None:
            return self.base_model
        from .stages import prune

        return prune.load(self.base_model, self.prune_entry.path)

    @property
    def prune_entry(self):
        return self.entries[self.label_prefix + "prune"]

    @cached_property
    def train_data(self):
        from .data import check_inputs, load_arrays

        arrays = load_arrays(self.spec.prune.train, self.spec, "prune.train")
        check_inputs(arrays, self.spec, f"prune.train data ({self.spec.prune.train})")
        return arrays
