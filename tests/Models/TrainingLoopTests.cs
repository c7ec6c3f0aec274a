using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using static ComposerSharp.Tests.Models.ModelTestData;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

/// <summary>Each model learns its synthetic task in a few steps of a plain Adam loop (no Trainer).</summary>
[TestFixture]
[Category(TestCategories.Slow)]
public class TrainingLoopTests
{
    private static (double Before, double After) Train<TSample>(
        ComposerModel model, DataLoader<TSample> loader, int steps, Precision precision, IMetric? metric = null, double lr = 3e-3)
    {
        Batch[] eval = loader.GetEpoch(1000).Take(2).ToArray(); // fixed held-out batches (epoch 1000 is never trained on here)
        double Evaluate()
        {
            using var scope = torch.NewDisposeScope();
            model.eval();
            metric?.Reset();
            double total = 0;
            using (torch.no_grad())
            using (precision.Enter(DeviceType.CPU))
            {
                foreach (Batch b in eval)
                {
                    Tensor outputs = model.call(b);
                    total += model.Loss(outputs, b).item<float>();
                    if (metric is not null)
                    {
                        model.UpdateMetric(b, outputs, metric);
                    }
                }
            }

            model.train();
            return total / eval.Length;
        }

        double before = Evaluate();
        var optimizer = torch.optim.Adam(model.parameters(), lr);
        int step = 0;
        for (long epoch = 0; step < steps; epoch++)
        {
            using IEnumerator<Batch> batches = loader.GetEpoch(epoch).GetEnumerator();
            while (step < steps)
            {
                using var scope = torch.NewDisposeScope();
                if (!batches.MoveNext())
                {
                    break;
                }

                Batch batch = batches.Current;
                optimizer.zero_grad();
                Tensor loss;
                using (precision.Enter(DeviceType.CPU))
                {
                    loss = model.Loss(model.call(batch), batch);
                }

                Assert.That(loss.dtype, Is.EqualTo(ScalarType.Float32));
                loss.backward();
                optimizer.step();
                step++;
            }
        }

        return (before, Evaluate());
    }

    [Test]
    public void BertMlmLossDecreasesOnSyntheticData()
    {
        torch.manual_seed(21);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 256, SequenceLength = 32, RegularVocabSize = 60, Branching = 1, Seed = 1 });
        var loader = new DataLoader<long[]>(data, 16, new MlmCollator(data.Vocabulary), shuffle: true, seed: 2);
        var model = new BertForMaskedLM(Tiny() with { Dropout = 0.0, AttentionDropout = 0.0 });
        var accuracy = new MaskedAccuracy();
        (double before, double after) = Train(model, loader, 50, Precision.Fp32, accuracy);
        TestContext.Out.WriteLine($"MLM eval loss {before:F3} -> {after:F3}, masked accuracy {accuracy.Compute():F3}");

        // Uniform guessing over the 64 ids costs ln 64 ≈ 4.16 nats; the chain's walks settle into short cycles, so even
        // the token frequencies alone are worth far less.
        Assert.That(after, Is.LessThan(0.8 * before));
        Assert.That(accuracy.Compute(), Is.GreaterThan(2.0 / 60), "better than guessing among the regular ids");
    }

    [Test]
    public void GptLossDecreasesOnSyntheticDataUnderAmpBf16()
    {
        torch.manual_seed(22);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 256, SequenceLength = 32, RegularVocabSize = 60, Branching = 2, Seed = 3 });
        var loader = new DataLoader<long[]>(data, 16, new CausalLmCollator(data.Vocabulary), shuffle: true, seed: 4);
        var model = new GptForCausalLM(Tiny("gpt-tiny") with { Dropout = 0.0, AttentionDropout = 0.0 });
        var perplexity = new PerplexityMetric();
        (double before, double after) = Train(model, loader, 40, Precision.AmpBf16, perplexity);
        TestContext.Out.WriteLine($"GPT eval loss {before:F3} -> {after:F3}, perplexity {perplexity.Compute():F2}");

        // A 2-successor chain has next-token entropy ln 2 ≈ 0.69 nats; uniform guessing over 64 ids costs ln 64 ≈ 4.16.
        Assert.That(after, Is.LessThan(0.6 * before));
        Assert.That(perplexity.Compute(), Is.EqualTo(Math.Exp(after)).Within(0.05 * Math.Exp(after)));
    }

    [Test]
    public void ClassifierLearnsSyntheticKeywordsUnderAmpBf16()
    {
        torch.manual_seed(23);
        var data = new SyntheticClassificationDataset(new SyntheticClassificationOptions
        {
            NumSamples = 512, MinLength = 8, MaxLength = 24, RegularVocabSize = 60, KeywordsPerClass = 4, Seed = 5,
        });
        var loader = new DataLoader<TextClassificationSample>(data, 32, new ClassificationCollator(data.Vocabulary), shuffle: true, seed: 6);
        var model = new BertForSequenceClassification(Tiny() with { Dropout = 0.0, AttentionDropout = 0.0 }, new SequenceClassificationOptions { Pooling = SequencePooling.Mean });
        var accuracy = new ClassificationAccuracy();
        (double before, double after) = Train(model, loader, 60, Precision.AmpBf16, accuracy);
        TestContext.Out.WriteLine($"classification eval loss {before:F3} -> {after:F3}, accuracy {accuracy.Compute():F3}");
        Assert.That(after, Is.LessThan(0.5 * before));
        Assert.That(accuracy.Compute(), Is.GreaterThan(0.9));
    }
}
