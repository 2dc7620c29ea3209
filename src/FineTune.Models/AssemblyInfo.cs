namespace FineTune.Models;
