"""Linear and logistic probes on activations (from an activations store or a live model).

    from workbench.probes import train_probe
    probe = train_probe(features, labels, kind="logistic", groups=doc_ids)   # [N, d], [N], [N]
    probe.metrics["validation"]          # accuracy, macro_f1, per_class{precision, recall, ...}
    probe.predict(x); probe.save(folder); Probe.load(folder)

    # language ID on a lab model's residual stream, saved as a `probe` artifact:
    probe = run_probe(lab, "lang-probe", ProbeRun(model="lm", hook="blocks.1.hook_resid_pre",
                                                  corpus="corpus", labels="language"))

Modules: model (Probe, fitting), metrics, data (activations + labels, document splits,
pooling), train (train_probe, run_probe, probe artifacts).
"""

from workbench.probes.data import (
    ProbeData,
    document_labels,
    group_split_mask,
    mean_by_group,
    probe_data_from_model,
    probe_data_from_store,
)
from workbench.probes.metrics import classification_metrics
from workbench.probes.model import Probe, ProbeConfig, fit_probe
from workbench.probes.train import ProbeRun, load_probe, run_probe, save_probe, train_probe

__all__ = [
    "Probe",
    "ProbeConfig",
    "ProbeData",
    "ProbeRun",
    "classification_metrics",
    "document_labels",
    "fit_probe",
    "group_split_mask",
    "load_probe",
    "mean_by_group",
    "probe_data_from_model",
    "probe_data_from_store",
    "run_probe",
    "save_probe",
    "train_probe",
]
