using FineTune.Training.Metrics;

namespace FineTune.Training.Tests;

public sealed class MetricsTests
{
    static IReadOnlyList<string> T(string s) => MetricSegmenter.Split(s);

    [Fact]
    public void Segmenter_splits_cjk_per_character_and_other_text_per_word() =>
        Assert.Equal(["I", "am", "小", "明", ",", "ok", "!"], T("I am 小明, ok!"));

    [Fact]
    public void Identical_sentences_score_bleu_one() =>
        Assert.Equal(1.0, Bleu.SentenceBleu4(T("the cat sat on the mat"), T("the cat sat on the mat")), 15);

    [Fact]
    public void Bleu_smooths_a_missing_four_gram_with_method3()
    {
        // p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3 → 1/(2·3); BP = 1 → (5/6·3/5·1/4·1/6)^¼ = (1/48)^¼.
        double bleu = Bleu.SentenceBleu4(T("the cat is on the mat"), T("the cat sat on the mat"));
        Assert.Equal(0.37991784282579627, bleu, 14);
    }

    [Fact]
    public void Bleu_applies_brevity_penalty_and_successive_smoothing()
    {
        // c = 3, r = 6: BP = e^(1−2). p1 = 2/3, p2 = 1/2, p3 = 0/1 → 1/2, p4 = 0/max(1,0) → 1/4.
        double bleu = Bleu.SentenceBleu4(T("a b c d e f"), T("a b x"));
        Assert.Equal(0.16620830006469264, bleu, 14);
    }

    [Fact]
    public void Bleu_is_zero_without_a_matching_unigram() =>
        Assert.Equal(0.0, Bleu.SentenceBleu4(T("a b c d"), T("w x y z")));

    [Fact]
    public void Rouge_counts_distinct_ngrams_on_cjk_text()
    {
        // hyp 我是人, ref 我是一個人: R1 p = 3/3, r = 3/5; R2 p = 1/2, r = 1/4; L = LCS 我是人.
        var s = Rouge.Score(T("我是一個人"), T("我是人"));
        Assert.Equal(0.7499999953125, s.Rouge1.F, 15);
        Assert.Equal(0.33333332888888895, s.Rouge2.F, 15);
        Assert.Equal(0.7499999953125, s.RougeL.F, 15);
    }

    [Fact]
    public void Rouge_on_words_matches_hand_counts()
    {
        // Sets: R1 {the,cat,sat,on,mat} vs {the,cat,is,on,mat}: 4/5 each; R2 3 of 5 bigrams; LCS "the cat on the mat" → 4 distinct of 5.
        var s = Rouge.Score(T("the cat is on the mat"), T("the cat sat on the mat"));
        Assert.Equal(0.7999999950000001, s.Rouge1.F, 15);
        Assert.Equal(0.5999999950000001, s.Rouge2.F, 15);
        Assert.Equal(0.7999999950000001, s.RougeL.F, 15);
    }

    [Fact]
    public void Rouge_counts_repeated_tokens_once() =>
        Assert.Equal(1.0, Rouge.Score(T("a a b"), T("a b")).Rouge1.Recall);

    [Fact]
    public void Empty_prediction_scores_zero() =>
        Assert.Equal(0.0, Rouge.Score(T("a b"), T("")).RougeL.F);

    [Fact]
    public void Corpus_metrics_average_percentages_rounded_to_four_places()
    {
        var m = GenerationMetrics.Compute(["the cat is on the mat", "a b c d e f"], ["the cat sat on the mat", "a b x"]);
        // (37.9918 + 16.6208) / 2 after rounding each sample's percentage to 4 places.
        Assert.Equal((37.9918 + 16.6208) / 2, m.Bleu4, 12);
        Assert.Equal(2, m.Count);
    }
}
