namespace FineTune.Data;
