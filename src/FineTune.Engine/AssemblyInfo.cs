namespace FineTune.Engine;
