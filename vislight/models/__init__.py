from vislight.models.classifier import Classifier
from vislight.models.registry import MissingWeightsError, build_classifier, load_state_dict_file

__all__ = ["Classifier", "MissingWeightsError", "build_classifier", "load_state_dict_file"]
