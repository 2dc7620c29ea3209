namespace FineTune.Training;
