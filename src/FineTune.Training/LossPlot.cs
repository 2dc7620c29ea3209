using System.Globalization;
using System.Net;
using System.Text;

namespace FineTune.Training;

/// <summary>
/// LLaMA-Factory's <c>plot_loss</c> as SVG: the raw curve (faint) and its smoothed curve against
/// the step, one file per metric: <c>training_loss.svg</c>, and <c>training_eval_loss.svg</c> when
/// the log holds eval losses.
/// </summary>
public static class LossPlot
{
    public const string TrainFile = "training_loss.svg";
    public const string EvalFile = "training_eval_loss.svg";

    /// <summary>
    /// LLaMA-Factory's <c>smooth</c>: an exponential moving average s₀ = x₀, sᵢ = w·sᵢ₋₁ + (1−w)·xᵢ whose
    /// weight grows with the number of points N through a sigmoid: w = 1.8 · (1 / (1 + e^(−0.05·N)) − 0.5).
    /// </summary>
    public static double[] Smooth(IReadOnlyList<double> values)
    {
        if (values.Count == 0) return [];
        double weight = 1.8 * (1.0 / (1.0 + Math.Exp(-0.05 * values.Count)) - 0.5);
        var smoothed = new double[values.Count];
        double last = values[0];
        for (int i = 0; i < values.Count; i++)
        {
            last = last * weight + (1 - weight) * values[i];
            smoothed[i] = last;
        }
        return smoothed;
    }

    /// <summary>Writes the SVG files next to <paramref name="directory"/>'s trainer log; returns the paths written.</summary>
    public static IReadOnlyList<string> Write(string directory, IReadOnlyList<TrainerLogEntry> log)
    {
        var written = new List<string>();
        var train = log.Where(e => e.Loss is not null).Select(e => (e.CurrentSteps, e.Loss!.Value)).ToList();
        var eval = log.Where(e => e.EvalLoss is not null).Select(e => (e.CurrentSteps, e.EvalLoss!.Value)).ToList();
        foreach (var (key, file, points) in new[] { ("loss", TrainFile, train), ("eval_loss", EvalFile, eval) })
        {
            if (points.Count == 0) continue;
            string path = Path.Combine(directory, file);
            string tmp = path + ".tmp";
            File.WriteAllText(tmp, Render(points, $"training {key}", key));
            File.Move(tmp, path, overwrite: true);
            written.Add(path);
        }
        return written;
    }

    /// <summary>An SVG line chart: axes with ticks, the raw series at 40% opacity, the smoothed series, a legend.</summary>
    public static string Render(IReadOnlyList<(int Step, double Value)> points, string title, string yLabel)
    {
        const double width = 640, height = 480, left = 70, right = 20, top = 40, bottom = 55;
        double plotW = width - left - right, plotH = height - top - bottom;
        var smoothed = Smooth(points.Select(p => p.Value).ToList());
        double xMin = points.Min(p => p.Step), xMax = points.Max(p => p.Step);
        double yMin = Math.Min(points.Min(p => p.Value), smoothed.Min());
        double yMax = Math.Max(points.Max(p => p.Value), smoothed.Max());
        if (xMax == xMin) { xMin -= 1; xMax += 1; }
        // Flat within rounding (one point: its smoothed value may be an ulp off it): a unit range around it.
        if (yMax - yMin <= 1e-9 * Math.Max(1, Math.Abs(yMax))) { double mid = (yMin + yMax) / 2; yMin = mid - 0.5; yMax = mid + 0.5; }
        double pad = (yMax - yMin) * 0.05;
        yMin -= pad; yMax += pad;
        double X(double step) => left + (step - xMin) / (xMax - xMin) * plotW;
        double Y(double v) => top + (1 - (v - yMin) / (yMax - yMin)) * plotH;
        static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);

        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{F(width)}\" height=\"{F(height)}\" viewBox=\"0 0 {F(width)} {F(height)}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        svg.Append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(width / 2)}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{WebUtility.HtmlEncode(title)}</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{F(left)}\" y=\"{F(top)}\" width=\"{F(plotW)}\" height=\"{F(plotH)}\" fill=\"none\" stroke=\"black\"/>\n");
        foreach (double t in NiceTicks(xMin, xMax, 6))
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{F(X(t))}\" y1=\"{F(top + plotH)}\" x2=\"{F(X(t))}\" y2=\"{F(top + plotH + 5)}\" stroke=\"black\"/><text x=\"{F(X(t))}\" y=\"{F(top + plotH + 19)}\" text-anchor=\"middle\">{t.ToString("G6", CultureInfo.InvariantCulture)}</text>\n");
        foreach (double t in NiceTicks(yMin, yMax, 6))
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{F(left - 5)}\" y1=\"{F(Y(t))}\" x2=\"{F(left)}\" y2=\"{F(Y(t))}\" stroke=\"black\"/><text x=\"{F(left - 8)}\" y=\"{F(Y(t) + 4)}\" text-anchor=\"end\">{t.ToString("G4", CultureInfo.InvariantCulture)}</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(left + plotW / 2)}\" y=\"{F(height - 12)}\" text-anchor=\"middle\">step</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text transform=\"translate(18 {F(top + plotH / 2)}) rotate(-90)\" text-anchor=\"middle\">{WebUtility.HtmlEncode(yLabel)}</text>\n");

        string Polyline(IEnumerable<(int Step, double Value)> series) =>
            string.Join(' ', series.Select(p => $"{F(X(p.Step))},{F(Y(p.Value))}"));
        svg.Append(CultureInfo.InvariantCulture, $"<polyline id=\"original\" fill=\"none\" stroke=\"#1f77b4\" stroke-opacity=\"0.4\" stroke-width=\"1.5\" points=\"{Polyline(points)}\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<polyline id=\"smoothed\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{Polyline(points.Select((p, i) => (p.Step, smoothed[i])))}\"/>\n");
        double lx = left + plotW - 120, ly = top + 12;
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{F(lx)}\" y1=\"{F(ly)}\" x2=\"{F(lx + 24)}\" y2=\"{F(ly)}\" stroke=\"#1f77b4\" stroke-opacity=\"0.4\" stroke-width=\"1.5\"/><text x=\"{F(lx + 30)}\" y=\"{F(ly + 4)}\">original</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{F(lx)}\" y1=\"{F(ly + 18)}\" x2=\"{F(lx + 24)}\" y2=\"{F(ly + 18)}\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"{F(lx + 30)}\" y=\"{F(ly + 22)}\">smoothed</text>\n");
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    /// <summary>Tick positions at 1, 2 or 5 × 10ᵏ spacing inside [min, max].</summary>
    static IEnumerable<double> NiceTicks(double min, double max, int target)
    {
        double raw = (max - min) / target;
        double mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = raw / mag < 1.5 ? mag : raw / mag < 3.5 ? 2 * mag : raw / mag < 7.5 ? 5 * mag : 10 * mag;
        for (double t = Math.Ceiling(min / step) * step; t <= max + step * 1e-9; t += step)
            yield return Math.Round(t / step) * step;
    }
}
