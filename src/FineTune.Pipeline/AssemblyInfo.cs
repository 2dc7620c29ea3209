namespace FineTune.Pipeline;
