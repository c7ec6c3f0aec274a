using System.Globalization;
using System.Text;
using TorchSharp;

namespace ComposerSharp.Training.Loggers;

/// <summary>
/// Writes metrics as TensorBoard scalars through TorchSharp's <c>torch.utils.tensorboard.SummaryWriter</c>
/// (Composer's <c>TensorboardLogger</c>): each metric is a scalar with its name as the tag and the batch count as
/// the step (values are stored as Float32, as TensorBoard does); hyperparameters become a markdown table under the
/// text tag <c>hyperparameters</c>. Event files (<c>events.out.tfevents.*</c>) go into <see cref="LogDir"/>.
/// </summary>
public sealed class TensorBoardLogger : LoggerDestination
{
    private readonly TorchSharp.Modules.SummaryWriter _writer;

    /// <summary>Creates the logger writing into <paramref name="logDir"/> (created if missing).</summary>
    public TensorBoardLogger(string logDir)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(logDir);
        LogDir = Path.GetFullPath(logDir);
        _writer = torch.utils.tensorboard.SummaryWriter(LogDir);
    }

    /// <summary>The event-file folder (absolute path).</summary>
    public string LogDir { get; }

    /// <inheritdoc/>
    public override void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        int s = (int)Math.Min(step, int.MaxValue);
        foreach ((string name, double value) in metrics)
        {
            _writer.add_scalar(name, (float)value, s);
        }
    }

    /// <inheritdoc/>
    public override void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
        var sb = new StringBuilder("| name | value |\n| --- | --- |\n");
        foreach ((string name, object? value) in hyperparameters)
        {
            sb.Append(CultureInfo.InvariantCulture, $"| {name} | {value} |\n");
        }

        _writer.add_text("hyperparameters", sb.ToString(), 0);
    }
}
