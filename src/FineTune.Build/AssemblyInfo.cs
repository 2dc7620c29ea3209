namespace FineTune.Build;
