"""The model lifecycle on site: dataset, record, train, evaluate, quantize, model cards."""
