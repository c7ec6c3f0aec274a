using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Models;

/// <summary>
/// A metric that also reports a breakdown of its value (for example per class); the Trainer logs each entry as
/// <c>metrics/&lt;label&gt;/&lt;key&gt;</c> beside the metric's own value.
/// </summary>
public interface IMetricBreakdown
{
    /// <summary>The breakdown since the last reset, keyed by a name such as <c>F1/spam</c>; empty before any update.</summary>
    IReadOnlyDictionary<string, double> Breakdown();
}

/// <summary>
/// Macro-averaged F1 of arg-max predictions for C classes (torchmetrics' <c>MulticlassF1Score(average="macro")</c>,
/// scikit-learn's <c>f1_score(average="macro", zero_division=0)</c>): the unweighted mean of the per-class
/// F1 = 2·TP / (2·TP + FP + FN) over the classes that occur among the labels or the predictions. Class logits
/// [B, C] (any float dtype) and labels [B] (Int64; −100 ignored). The breakdown gives <c>precision/NAME</c>,
/// <c>recall/NAME</c> and <c>F1/NAME</c> per class (0 where undefined) and the confusion-matrix counts
/// <c>confusion/TRUE/PREDICTED</c>. The confusion matrix is kept on the host (C × C counts).
/// </summary>
public sealed class MulticlassF1Score : IReducibleMetric, IMetricBreakdown
{
    private readonly long[,] _confusion;
    private readonly string[] _classNames;

    /// <summary>Creates the metric, named <c>F1</c>.</summary>
    /// <param name="numClasses">C, at least 2.</param>
    /// <param name="classNames">Names of the classes in index order for the breakdown, or null for the indices.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numClasses"/> is below 2.</exception>
    /// <exception cref="ArgumentException"><paramref name="classNames"/> does not have <paramref name="numClasses"/> entries.</exception>
    public MulticlassF1Score(int numClasses, IReadOnlyList<string>? classNames = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(numClasses, 2);
        if (classNames is not null && classNames.Count != numClasses)
        {
            throw new ArgumentException($"{classNames.Count} class names were given for {numClasses} classes.", nameof(classNames));
        }

        _confusion = new long[numClasses, numClasses];
        _classNames = classNames?.ToArray() ?? Enumerable.Range(0, numClasses).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray();
    }

    /// <inheritdoc/>
    public string Name => "F1";

    /// <summary>
    /// The breakdown's prefix of the confusion-matrix counts: <c>confusion/TRUE/PREDICTED</c> with class indices
    /// (the CLI draws them as <c>confusion.png</c>).
    /// </summary>
    public const string ConfusionPrefix = "confusion/";

    /// <summary>Number of classes C.</summary>
    public int NumClasses => _confusion.GetLength(0);

    /// <summary>The confusion matrix, row-major (C·C sums).</summary>
    public double[] GetState() => _confusion.Cast<long>().Select(v => (double)v).ToArray();

    /// <summary>Replaces the confusion matrix with <paramref name="state"/> (row-major, C·C values).</summary>
    /// <exception cref="ArgumentException"><paramref name="state"/> does not have C·C values.</exception>
    public void SetState(double[] state)
    {
        int c = NumClasses;
        if (state is null || state.Length != c * c)
        {
            throw new ArgumentException($"Expected {c * c} state values (a {c}×{c} confusion matrix), got {state?.Length.ToString(CultureInfo.InvariantCulture) ?? "null"}.", nameof(state));
        }

        for (int i = 0; i < c; i++)
        {
            for (int j = 0; j < c; j++)
            {
                _confusion[i, j] = (long)state[i * c + j];
            }
        }
    }

    /// <summary>Counts since the last reset: [true class, predicted class].</summary>
    public long[,] ConfusionMatrix => (long[,])_confusion.Clone();

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">The logits do not have C columns, or a label is outside [0, C) and not −100.</exception>
    public void Update(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        (Tensor logits, Tensor labels) = Losses.Flatten(outputs, Losses.Labels(batch));
        int c = NumClasses;
        if (logits.shape[1] != c)
        {
            throw new ArgumentException($"The logits have {logits.shape[1]} classes; this metric was made for {c}.", nameof(outputs));
        }

        Tensor valid = labels.ne(Losses.IgnoreIndex);
        Tensor truth = labels.masked_select(valid);
        Tensor predicted = logits.argmax(-1).masked_select(valid);
        if (truth.numel() == 0)
        {
            return;
        }

        long min = truth.min().item<long>(), max = truth.max().item<long>();
        if (min < 0 || max >= c)
        {
            throw new ArgumentException($"A label is {(min < 0 ? min : max)}; expected a class in [0, {c}) or {Losses.IgnoreIndex} (ignored).", nameof(batch));
        }

        long[] counts = torch.bincount(truth * c + predicted, minlength: c * c).cpu().data<long>().ToArray();
        for (int i = 0; i < c; i++)
        {
            for (int j = 0; j < c; j++)
            {
                _confusion[i, j] += counts[(i * c) + j];
            }
        }
    }

    /// <inheritdoc/>
    public double Compute()
    {
        (double[] _, double[] _, double[] f1, bool[] present) = PerClass();
        int n = present.Count(p => p);
        return n == 0 ? double.NaN : Enumerable.Range(0, NumClasses).Where(i => present[i]).Sum(i => f1[i]) / n;
    }

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, double> Breakdown()
    {
        (double[] precision, double[] recall, double[] f1, bool[] present) = PerClass();
        var result = new Dictionary<string, double>();
        if (!present.Any(p => p))
        {
            return result;
        }

        for (int i = 0; i < NumClasses; i++)
        {
            result[$"precision/{_classNames[i]}"] = precision[i];
            result[$"recall/{_classNames[i]}"] = recall[i];
            result[$"F1/{_classNames[i]}"] = f1[i];
        }

        for (int i = 0; i < NumClasses; i++)
        {
            for (int j = 0; j < NumClasses; j++)
            {
                result[$"{ConfusionPrefix}{i}/{j}"] = _confusion[i, j];
            }
        }

        return result;
    }

    /// <inheritdoc/>
    public void Reset() => Array.Clear(_confusion);

    private (double[] Precision, double[] Recall, double[] F1, bool[] Present) PerClass()
    {
        int c = NumClasses;
        var precision = new double[c];
        var recall = new double[c];
        var f1 = new double[c];
        var present = new bool[c];
        for (int k = 0; k < c; k++)
        {
            long tp = _confusion[k, k], support = 0, predicted = 0;
            for (int j = 0; j < c; j++)
            {
                support += _confusion[k, j];
                predicted += _confusion[j, k];
            }

            long fp = predicted - tp, fn = support - tp;
            present[k] = support > 0 || predicted > 0;
            precision[k] = predicted == 0 ? 0 : (double)tp / predicted;
            recall[k] = support == 0 ? 0 : (double)tp / support;
            f1[k] = (2 * tp) + fp + fn == 0 ? 0 : 2.0 * tp / ((2 * tp) + fp + fn);
        }

        return (precision, recall, f1, present);
    }
}
