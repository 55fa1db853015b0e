"""Evaluation metrics and plots."""
from crossfuse.metrics.calibration import calibration
from crossfuse.metrics.classification import classification_metrics, regression_metrics
from crossfuse.metrics.retrieval import retrieval_metrics
from crossfuse.metrics.plots import plot_confusion_matrix, plot_reliability, plot_robustness, plot_search_results, plot_training_curves

__all__ = ["calibration", "classification_metrics", "plot_confusion_matrix", "plot_reliability", "plot_robustness", "plot_search_results",
           "plot_training_curves", "regression_metrics", "retrieval_metrics"]
