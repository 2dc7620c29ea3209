namespace FineTune.Tokenizers;

/// <summary>Adds special tokens around an encoded sequence when the caller asks for them.</summary>
internal interface IPostProcessor
{
    void Process(List<int> ids);
}

/// <summary>HF TemplateProcessing for a single sequence: e.g. <c>&lt;s&gt; $A</c> for Llama.</summary>
internal sealed class TemplateProcessor(IReadOnlyList<TemplatePart> single) : IPostProcessor
{
    public void Process(List<int> ids)
    {
        var sequence = ids.ToArray();
        ids.Clear();
        foreach (var part in single)
        {
            if (part.SpecialIds is { } special) ids.AddRange(special);
            else ids.AddRange(sequence);
        }
    }
}

/// <summary>One item of a template: special-token ids, or (when null) the sequence itself.</summary>
internal sealed record TemplatePart(int[]? SpecialIds);

/// <summary>BERT / RoBERTa style: [CLS] A [SEP].</summary>
internal sealed class ClsSepProcessor(int cls, int sep) : IPostProcessor
{
    public void Process(List<int> ids)
    {
        ids.Insert(0, cls);
        ids.Add(sep);
    }
}

internal sealed class SequenceProcessor(IReadOnlyList<IPostProcessor> steps) : IPostProcessor
{
    public void Process(List<int> ids)
    {
        foreach (var step in steps) step.Process(ids);
    }
}
