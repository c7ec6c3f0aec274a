namespace ComposerSharp.Cli.Reporting;

/// <summary>Draws train and eval loss against optimizer steps into a PNG with ScottPlot.</summary>
public static class LossPlot
{
    /// <summary>The metric drawn as the training curve.</summary>
    public const string TrainLoss = "loss/train/total";

    /// <summary>
    /// Writes <paramref name="path"/> (PNG, <paramref name="width"/> × <paramref name="height"/> pixels) with the train
    /// loss and every <c>metrics/eval/*</c> metric whose name contains "CrossEntropy" or "Loss". Returns false, writing
    /// nothing, when no loss was logged.
    /// </summary>
    /// <exception cref="IOException">The file cannot be written.</exception>
    public static bool Save(MetricHistory history, string path, int width = 900, int height = 500)
    {
        IReadOnlyList<MetricPoint> train = history.Series(TrainLoss);
        var evalNames = history.Names
            .Where(n => n.StartsWith("metrics/eval/", StringComparison.Ordinal) &&
                        (n.Contains("CrossEntropy", StringComparison.OrdinalIgnoreCase) || n.Contains("Loss", StringComparison.OrdinalIgnoreCase)))
            .ToList();
        if (train.Count == 0 && evalNames.Count == 0)
        {
            return false;
        }

        var plot = new ScottPlot.Plot();
        if (train.Count > 0)
        {
            var line = plot.Add.Scatter(train.Select(p => (double)p.Step).ToArray(), train.Select(p => p.Value).ToArray());
            line.LegendText = "train loss";
            line.MarkerSize = 0;
        }

        foreach (string name in evalNames)
        {
            IReadOnlyList<MetricPoint> series = history.Series(name);
            var line = plot.Add.Scatter(series.Select(p => (double)p.Step).ToArray(), series.Select(p => p.Value).ToArray());
            line.LegendText = name["metrics/".Length..];
            line.MarkerSize = 6;
        }

        plot.Title("Loss");
        plot.XLabel("batch (optimizer step)");
        plot.YLabel("loss");
        plot.ShowLegend(ScottPlot.Alignment.UpperRight);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        plot.SavePng(path, width, height);
        return true;
    }
}
