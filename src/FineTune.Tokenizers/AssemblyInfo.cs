namespace FineTune.Tokenizers;
